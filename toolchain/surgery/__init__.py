"""Surgery: physically removing conv filters, with everything that reads or must match them.

The only importer of torch-pruning. graph.py holds the pruning graph (channel groups from torch-pruning's
dependency graph, the plan of kept channels, masking as the reversible twin of shrinking) and the
selection of chunks to remove; costs.py what removing a channel saves (MACs, measured latency).
"""

from .graph import (
    ChannelGroup,
    Chunk,
    PruningGraph,
    as_selection,
    conv_filter_count,
    filter_layers,
    is_depthwise,
    is_grouped,
    masked,
    out_channels,
    pointwise_linears,
    rank_chunks,
    removable_chunks,
    select_channels,
    traceable,
)

__all__ = ["Chunk", "ChannelGroup", "PruningGraph", "as_selection", "conv_filter_count", "filter_layers",
           "is_depthwise", "is_grouped", "masked", "out_channels", "pointwise_linears",
           "rank_chunks", "removable_chunks", "select_channels", "traceable"]
