"""Score, prune and shrink pretrained CNNs: scoring, surgery, control, the deploy stages, and a thin CLI."""
