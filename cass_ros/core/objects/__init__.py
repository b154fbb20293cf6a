"""Objects with identities (docs/algorithm.md 11): ``instances`` cuts each
class of a label image into its connected regions (8-connectivity, a size
filter, with depth also cut at depth jumps) and summarises each as the
classes are summarised (pixels, box, mean confidence, and with depth the
same 3D as core.depth); ``tracks`` follows one camera's instances from frame
to frame (mask overlap, optimal assignment per class) and gives them ids,
and with per-instance embeddings gives an ended track's id back to its
object when it returns (re-identification, ``reid_seconds``).

Pure numpy, scipy and OpenCV: no torch import, no ROS (the tracker takes
torch embeddings by duck typing). A camera's Tracker is kept
in the per-source registry of the temporal streams
(core.temporal.TemporalStreams.tracker) and restarts by the same rule.
"""
