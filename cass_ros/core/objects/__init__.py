"""Objects with identities (docs/algorithm.md 11): ``instances`` cuts each
class of a label image into its connected regions (8-connectivity, a size
filter, with depth also cut at depth jumps) and summarises each as the
classes are summarised (pixels, box, mean confidence, and with depth the
same 3D as core.depth); ``tracks`` follows one camera's instances from frame
to frame (mask overlap, optimal assignment per class) and gives them ids.

Pure numpy, scipy and OpenCV: no torch, no ROS. A camera's Tracker is kept
in the per-source registry of the temporal streams
(core.temporal.TemporalStreams.tracker) and restarts by the same rule.
"""
