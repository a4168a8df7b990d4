"""Score, prune and shrink pretrained CNNs: relevance, controller, surgery, pipeline, CLI."""
