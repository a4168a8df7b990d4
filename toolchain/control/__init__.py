"""Control: deciding how far to prune, from the small set alone.

- controller.py: the accuracy-aware controller of Yasui, Matsuki & Sato (docs/method.md), pure, behind
  the `PrunableModel` protocol;
- state.py: `PruningState`, the adapter that lets it (and the plain loop) drive a real model;
- prune.py: the pruning loops and their curve points;
- signals.py: A(M), the small-set estimates and the accuracy budget; feature_cache.py: the head-input
  cache they share; compensation.py: the closed-form re-fit of layers that read removed channels;
- curves.py: rate grids and the class-averaged AUC.
"""
