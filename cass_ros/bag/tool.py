"""The cass_bag pipeline: segment the camera images of a rosbag2 offline
(docs/ros-interface.md, cass_bag; the command line is cass_ros.cli.bag).

Reads a rosbag2 (sqlite3 or mcap; a bag directory or its .mcap/.db3 file;
or a recording of another tool, bag.inputs: a ROS 1 bag, a Foxglove MCAP),
segments the chosen image topics (sensor_msgs/Image or CompressedImage) with
the segmenter and parameters file of the node, and writes a new bag with the
node's output topics:

    /cass/<cam>/segmentation        sensor_msgs/Image mono8 (mono16 > 255 classes)
    /cass/<cam>/segmentation/color  sensor_msgs/Image rgb8 overlay
    /cass/<cam>/objects             cass_ros/ObjectPresenceArray
    /cass/<cam>/detections          vision_msgs/Detection2DArray  } when vision_msgs
    /cass/<cam>/label_info          vision_msgs/LabelInfo (latched) } is installed
    /cass/classes                   cass_ros/ClassTable (latched)
    /cass/<cam>/instances           sensor_msgs/Image 32SC1    } with the parameter
    /cass/<cam>/instance_objects    cass_ros/InstanceArray     } instances: true
    /cass/<cam>/features            cass_ros/Features          with publish_features: true
    /cass/<cam>/semantic/image_raw  semantic_inference_msgs/FeatureImage         } instances and
    /cass/<cam>/semantic/feature    semantic_inference_msgs/FeatureVectorStamped } semantic_inference

each output at the bag time of its input frame, with the input's header.
The language features are the node's (ros.outputs.features): the dense
features in ``features_dtype``; with ``instance_embeddings: true`` each
instance of instance_objects carries its pooled embedding, and
re-identification (``track_reid_seconds``) gets the embeddings as the
node's tracker does; the dense features are computed only for a run
that needs them (outputs.features.needs_dense). semantic_inference's
topics (ros.outputs.semantic_inference; the FeatureImage at the label
image's size, cass_bag having no depth) need the definitions of
semantic_inference_msgs on AMENT_PREFIX_PATH: asked for without them,
cass_bag refuses in one line before loading the model.
The overlays carry the legend when the parameters say ``overlay_legend:
true``. Beside the bag's own files, the output bag folder gets the colour
table of each prompt set in Hydra's CSV layout (docs/ros-interface.md, the
colour table): ``color_table_<prompt_id>.csv`` for every set the run puts
in force (the prompt_id of /cass/classes and of each objects message), and
``color_table.csv``, rewritten with every set as the node rewrites its
``color_table_file``: at the end it holds the last set. rosbags and ros2 bag
ignore files a bag's metadata does not list; ``--overwrite`` removes the
whole output folder, these files with it.
Prompt messages in the bag (/cass/prompts, std_msgs/String) apply from the
next frame on, checked, numbered and coloured by the same PromptSession as
the node's. Unlike the node, every frame is segmented (no frame is dropped
offline). With the node's ``temporal_*`` parameters each input topic has
its own temporal stream (docs/algorithm.md 5.6) on the frames' header
stamps, as the node keeps one per camera. A bag cut short by a crash is
read up to its last intact message (bag.io.open_input_bag). Needs no ROS
installation: rosbags does the I/O.

The steps of ``run``: read the settings, check the paths, open the input,
choose the topics, check the outputs, load the model, open the outputs,
then one pass over the input's messages.

What cass_fleet (cass_ros.fleet; docs/ros-interface.md, cass_fleet) needs
of the same pipeline, none of which changes what cass_bag does: ``run``
takes an already-loaded Segmenter (``load_segmenter``), so a worker loads
the model once and keeps its text-embedding cache across bags;
``BagToolOptions.frame_range`` runs one chunk of a bag (the prompt
messages before it are applied without being written, so prompt_ids go on
as in the whole run); ``prefetch`` reads and decodes frames in a thread
ahead of the model; ``on_frame`` reports progress; ``plan_bag`` says what a
run would segment without loading the model.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rosbags.interfaces import Connection, MessageDefinitionFormat
from rosbags.rosbag2 import Writer
from rosbags.typesys.store import Typestore
from tqdm import tqdm

from . import io as bag_io
from ..core.config import CassConfig, ConfigError, read_settings_file
from ..core.prompt_session import PromptSession
from ..core.prompts import PromptError, PromptSet, build_prompt_set, parse_prompt_text
from ..core.result import SegmentationResult
from ..core.temporal import StreamFrame, TemporalStreams, stamp_seconds
from ..core.visualize import draw_legend, outline_instances, overlay, write_color_table
from ..ros import params as node_params
from ..ros.inputs.image_conversion import ImageConversionError
from ..ros.outputs import semantic_inference as si
from ..ros.outputs.features import features_fields, frame_dense, needs_dense
from ..ros.outputs.instances import (FrameObjects, frame_objects, instance_detection_fields,
                                    instance_fields, instance_image_fields)

if TYPE_CHECKING:  # imports torch: loaded in _load_segmenter, see there
    from ..core.queries.dense import DenseFeatures
    from ..core.queries.features import ImageFeatures
    from ..core.segmenter import Segmenter

log = logging.getLogger("cass_bag")

# In the output bag folder (module docstring): the latest set, and one per prompt_id.
COLOR_TABLE_NAME = "color_table.csv"
COLOR_TABLE_PER_SET = "color_table_{prompt_id}.csv"


@dataclass
class BagToolOptions:
    """What ``cass_bag`` is asked to do (the command line, as data)."""

    input_bag: Path
    out: Path
    params_file: Path | None = None
    topics: list[str] = field(default_factory=list)
    overlays: Path | None = None
    summary: Path | None = None
    overwrite: bool = False
    settings: dict[str, Any] = field(default_factory=dict)  # --set, over the params file
    storage: str = "mcap"
    color: bool = True
    copy_input: bool = False
    progress: bool = True
    batch: int = 1                 # frames per Segmenter.segment call (--batch)
    # cass_fleet only (module docstring); the defaults are cass_bag's behaviour.
    # frame_range (start, stop): the frames at positions start..stop-1 of the
    # chosen topics, in bag order, and the other messages between them.
    frame_range: tuple[int, int | None] | None = None  # stop None: to the end
    prefetch: int = 0              # decoded frames a reading thread keeps ahead; 0: none
    on_frame: Callable[[], None] | None = None  # called per frame read (progress)


@dataclass
class BagToolReport:
    """What a run did (cass_ros.cli.bag prints it)."""

    frames_in: int = 0
    frames_out: int = 0
    frames_bad: int = 0            # could not be decoded
    frames_without_prompts: int = 0
    prompts_accepted: int = 0
    prompts_rejected: int = 0      # unparsable or failing the node's checks
    per_topic: dict[str, int] = field(default_factory=dict)
    input_messages: int = 0        # every message of the input that could be read
    input_cut_short: list[str] = field(default_factory=list)  # truncated storage files
    seconds: float = 0.0
    cameras: dict[str, str] = field(default_factory=dict)  # input topic -> camera name
    prompt_ids: list[int] = field(default_factory=list)    # of the frames segmented, sorted


@dataclass
class _Settings:
    """The node's parameters as cass_bag reads them, and the prompt state."""

    config: CassConfig
    runtime: node_params.RuntimeParams
    image_topics: list[str] | None     # the parameters' image_topics, when given
    session: PromptSession
    initial: PromptSet | None          # the starting set; None: wait for the bag's
    no_prompt_reason: str


@dataclass
class BagPlan:
    """What a run would segment (``plan_bag``), found without the model."""

    frames: int                        # image messages on the chosen topics
    cameras: dict[str, str]            # input topic -> camera name
    msgtypes: dict[str, str]           # input topic -> its message type
    message_count: int                 # messages that can be read
    cut_short: list[str]               # truncated storage files (InputBag.cut_short)


@dataclass
class _Stream:
    """One image topic of the input and its output topics."""

    topic: str
    msgtype: str
    camera: str
    outputs: dict[str, Connection] = field(default_factory=dict)  # kind -> output topic


@dataclass
class _Plan:
    """What to read from the input bag."""

    streams: dict[str, _Stream]
    prompt_ids: set[int]               # the input's /cass/prompts connections
    frames: int                        # image messages on the chosen topics


@dataclass
class _Run:
    """What the steps of one run share once the outputs are open."""

    opts: BagToolOptions
    settings: _Settings
    segmenter: Segmenter
    ts: Typestore
    writer: Writer
    classes_conn: Connection
    streams: dict[str, _Stream]
    copies: dict[int, Connection]      # input connection id -> its copy (--copy-input)
    summary: bag_io.SummaryWriter | None
    report: BagToolReport
    pending: list[_Pending] = field(default_factory=list)  # decoded, not yet segmented
    prompt_ids: set[int] = field(default_factory=set)      # of the frames segmented
    temporal: TemporalStreams = field(default_factory=TemporalStreams)  # per input topic


@dataclass
class _Pending:
    """A decoded input image waiting for its batch (``--batch``)."""

    stream: _Stream
    header: Any                        # the input's std_msgs/Header (rosbags)
    t_ns: int
    index: int
    rgb: np.ndarray


@dataclass
class _Frame:
    """One segmented input image."""

    header: Any                        # the input's std_msgs/Header (rosbags)
    t_ns: int                          # its bag time
    index: int                         # its place on its topic
    rgb: np.ndarray
    result: SegmentationResult
    dense: DenseFeatures | None = None  # where an output needs them (outputs.features.needs_dense)


def run(opts: BagToolOptions, segmenter: Segmenter | None = None) -> BagToolReport:
    """Do the work of ``cass_bag``; raises BagError / ConfigError / PromptError
    with a message meant for the user. ``segmenter``: one already loaded
    with these settings (``load_segmenter``) instead of loading it here."""
    started = time.perf_counter()
    if opts.batch < 1:
        raise ConfigError(f"--batch must be >= 1, not {opts.batch}")
    settings = _read_settings(opts)
    in_path, out_path = _check_paths(opts)
    with bag_io.open_input_bag(in_path) as bag, ExitStack() as outputs:
        plan = _plan(bag, settings, opts)
        _check_outputs(opts, out_path)
        if segmenter is None:
            segmenter = _load_segmenter(settings.config)
        ctx = _open_outputs(outputs, opts, settings, segmenter, bag, plan)
        ctx.report.input_messages = bag.message_count
        ctx.report.input_cut_short = list(bag.cut_short)
        ctx.report.cameras = {s.topic: s.camera for s in plan.streams.values()}
        _process(ctx, bag, plan)
    # (leaving the ExitStack closed the writer first: a bag cut short by an
    # error or Ctrl-C is still a readable bag)
    _warn_skipped(ctx.report, settings)
    ctx.report.prompt_ids = sorted(ctx.prompt_ids)
    ctx.report.seconds = time.perf_counter() - started
    return ctx.report


def load_segmenter(opts: BagToolOptions) -> Segmenter:
    """The segmenter ``run(opts)`` would load (the settings checked as it
    checks them), to pass to several runs."""
    return _load_segmenter(_read_settings(opts).config)


def plan_bag(opts: BagToolOptions) -> BagPlan:
    """What ``run(opts)`` would segment: the settings and the input checked,
    the topics chosen, as ``run`` does it; no model, no output. Raises as
    ``run`` does."""
    settings = _read_settings(opts)
    in_path, _ = _check_paths(opts)
    with bag_io.open_input_bag(in_path) as bag:
        plan = _plan(bag, settings, opts)
        return BagPlan(plan.frames, {s.topic: s.camera for s in plan.streams.values()},
                       {s.topic: s.msgtype for s in plan.streams.values()},
                       bag.message_count, list(bag.cut_short))


def nothing_segmented(frames_in: int, frames_bad: int, frames_without_prompts: int) -> str:
    """Why a run segmented no frame, in one line: cass_bag exits 1 with it
    and cass_fleet fails the bag with it (docs/ros-interface.md, cass_bag)."""
    if not frames_in:
        return "no frame segmented: the chosen image topics hold no message"
    why = [f"{n} {what}" for n, what in ((frames_bad, "could not be decoded"),
                                         (frames_without_prompts,
                                          "came before the first prompt set")) if n]
    return f"no frame segmented: of {frames_in} frame(s), {' and '.join(why)}"


def chunking_refused(opts: BagToolOptions) -> str | None:
    """Why these settings cannot run a bag in chunks (``frame_range``), or
    None: temporal smoothing, presence hysteresis and tracks carry state
    from frame to frame of a stream, which a chunk would start afresh."""
    runtime = _read_settings(opts).runtime
    on = [name for name, is_on in (("temporal_smoothing", runtime.temporal().smooths),
                                   ("temporal_present_on/off_frames", runtime.temporal().hysteresis),
                                   ("instances", runtime.instances)) if is_on]
    if not on:
        return None
    return (f"{' and '.join(on)} carry state from frame to frame of a camera: a bag cannot be "
            "split into chunks with them on; leave out --chunk-frames")


# ---------------------------------------------------------------- checks, before the model loads


def _read_settings(opts: BagToolOptions) -> _Settings:
    """The settings exactly as the node reads its parameters file."""
    values: dict[str, Any] = {}
    if opts.params_file is not None:
        values.update(read_settings_file(opts.params_file))
    values.update(opts.settings)
    unknown = sorted(set(values) - set(node_params.SPECS))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; known: "
                          f"{', '.join(node_params.SPECS)}")
    config, runtime = node_params.settings_from_values(values)
    for line in node_params.idle_settings(values):
        log.warning(line)
    session = PromptSession()
    try:
        initial: PromptSet | None = node_params.prompt_set_from_values(config, {})
    except PromptError as e:  # no prompts set: the bag's /cass/prompts may bring them
        initial, reason = None, str(e)
    else:
        # The node's start-up check: prompts that are set but unusable are
        # an error (PromptError), not "no prompts".
        session.request(initial)
        reason = ""
    image_topics = list(values["image_topics"]) if "image_topics" in values else None
    if runtime.instances and runtime.semantic_inference:
        _check_semantic_inference()
    return _Settings(config, runtime, image_topics, session, initial, reason)


def _check_semantic_inference() -> None:
    """``semantic_inference: true`` asks for semantic_inference's topics:
    refused in one line (ConfigError) without the message definitions of
    semantic_inference_msgs (the builders, ros.outputs.semantic_inference,
    need no ROS 2 Python)."""
    why = bag_io.semantic_missing(bag_io.make_typestore())
    if why is not None:
        raise ConfigError(f"semantic_inference: true, but its topics cannot be written: {why}")


def _check_paths(opts: BagToolOptions) -> tuple[Path, Path]:
    in_path = Path(opts.input_bag)
    if not in_path.exists():
        raise bag_io.BagError(f"input bag {in_path} does not exist")
    out_path = Path(opts.out)
    if _same_path(in_path, out_path) or _inside(in_path, out_path):
        raise bag_io.BagError(f"--out {out_path} would overwrite the input bag")
    return in_path, out_path


def _plan(bag: bag_io.InputBag, settings: _Settings, opts: BagToolOptions) -> _Plan:
    """The image topics and camera names, as the node would name them."""
    image_topics = {c.topic: c.msgtype for c in bag.connections
                    if c.msgtype in bag_io.IMAGE_TYPES}
    runtime = settings.runtime
    topics = _select_topics(image_topics, opts.topics, settings.image_topics,
                            runtime.image_transport)
    if runtime.camera_names and len(runtime.camera_names) == len(topics):
        cameras = list(runtime.camera_names)
    else:
        cameras = node_params.camera_names_for(topics)
    streams = {t: _Stream(t, image_topics[t], cam) for t, cam in zip(topics, cameras)}
    prompts = [c for c in bag.connections
               if c.topic == bag_io.PROMPTS_TOPIC and c.msgtype == bag_io.STRING]
    if settings.initial is None and not sum(c.msgcount for c in prompts):
        raise ConfigError(f"{settings.no_prompt_reason} (and the bag has no "
                          f"{bag_io.PROMPTS_TOPIC} message)")
    frames = sum(c.msgcount for c in bag.connections if c.topic in streams)
    for note in bag.notes:
        log.warning("%s", note)
    if bag.cut_short:
        log.warning("input bag is truncated: recovered %d messages (%d frames); %s",
                    bag.message_count, frames, "; ".join(bag.cut_short))
    for s in streams.values():
        log.info("segmenting %s (%s) as camera '%s'", s.topic, s.msgtype.rsplit("/", 1)[-1],
                 s.camera)
    return _Plan(streams, {c.id for c in prompts}, frames)


def _select_topics(image_topics: dict[str, str], wanted: Sequence[str],
                   params_topics: Sequence[str] | None, transport: str) -> list[str]:
    """The image topics to segment.

    ``--topics`` wins; else the node's ``image_topics`` from the parameters
    file (with its transport); else every image topic of the bag, skipping
    ``<t>/compressed`` when ``<t>`` is there raw (one stream per camera).
    """
    available = ", ".join(f"{t} ({m.rsplit('/', 1)[-1]})" for t, m in sorted(image_topics.items()))
    available = available or "none"
    if wanted:
        missing = [t for t in wanted if t not in image_topics]
        if missing:
            raise bag_io.BagError(f"topic(s) {', '.join(missing)} not found as images in the bag; "
                                  f"image topics in the bag: {available}")
        return list(dict.fromkeys(wanted))
    if params_topics:
        chosen = [t + "/compressed" if transport == "compressed" else t for t in params_topics]
        missing = [t for t in chosen if t not in image_topics]
        if missing:
            raise bag_io.BagError(f"image_topics of the parameters file ({', '.join(missing)}) "
                                  f"not found in the bag; image topics in the bag: {available}; "
                                  "choose with --topics")
        return chosen
    chosen = [t for t in sorted(image_topics)
              if not (t.endswith("/compressed") and t[: -len("/compressed")] in image_topics)]
    if not chosen:
        raise bag_io.BagError("the bag has no sensor_msgs/Image or CompressedImage topic")
    return chosen


def _check_outputs(opts: BagToolOptions, out_path: Path) -> None:
    """Refuse to overwrite before the slow model load."""
    bag_io.prepare_output_path(out_path, opts.overwrite)
    if opts.overlays is not None:
        _check_free(Path(opts.overlays), opts.overwrite, "--overlays", directory=True)
    if opts.summary is not None:
        _check_free(Path(opts.summary), opts.overwrite, "--summary", directory=False)


def _check_free(path: Path, overwrite: bool, flag: str, directory: bool) -> None:
    """Refuse to write over existing overlays or summaries without --overwrite."""
    if directory:
        if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
            raise bag_io.BagError(f"{flag} {path} exists and is not empty; pass --overwrite")
        if path.is_dir() and overwrite:
            # Only our own files: never empty a folder the user pointed at by mistake.
            for png in path.glob("*/*_overlay.png"):
                png.unlink()
            for png in path.glob("*/*_labels.png"):
                png.unlink()
    elif path.exists() and not overwrite:
        raise bag_io.BagError(f"{flag} {path} exists; pass --overwrite")


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _inside(path: Path, parent: Path) -> bool:
    try:
        return path.resolve().is_relative_to(parent.resolve())
    except OSError:
        return False


# ---------------------------------------------------------------- model and outputs


def _load_segmenter(config: CassConfig) -> Segmenter:
    """The node's segmenter. torch is imported here, not at the top: a run
    that stops at the checks above (and ``cass_bag --help``) answers without
    the seconds that importing torch takes."""
    from ..core.models import WeightsError
    from ..core.segmenter import Segmenter

    try:
        return Segmenter(config)
    except WeightsError as e:  # names the weights parameter: a settings error
        raise ConfigError(str(e)) from None


def _open_outputs(stack: ExitStack, opts: BagToolOptions, settings: _Settings,
                  segmenter: Segmenter, bag: bag_io.InputBag, plan: _Plan) -> _Run:
    """The output bag with the node's topics (and the copies), the summary;
    closed by ``stack``. The starting prompt set is prepared and its class
    table written at the input's start."""
    if settings.initial is not None:
        settings.session.activate(segmenter, settings.initial)
    summary = None
    if opts.summary is not None:
        summary = stack.enter_context(bag_io.SummaryWriter(opts.summary))
    ts = bag_io.make_typestore()
    writer = bag_io.open_writer(opts.out, opts.storage)
    stack.callback(writer.close)
    classes_conn = writer.add_connection(
        bag_io.CLASSES_TOPIC, bag_io.CLASS_TABLE, typestore=ts,
        offered_qos_profiles=[bag_io.qos_profile(transient_local=True, depth=1)])
    reliable = [bag_io.qos_profile(reliable=True)]
    latched = [bag_io.qos_profile(transient_local=True, depth=1)]
    types = {"labels": bag_io.IMAGE, "color": bag_io.IMAGE, "objects": bag_io.OBJECTS,
             "detections": bag_io.DETECTIONS_TYPE, "label_info": bag_io.LABEL_INFO_TYPE,
             "instances": bag_io.IMAGE, "instance_objects": bag_io.INSTANCES,
             "features": bag_io.FEATURES}
    kinds = ["labels", "color", "objects"] if opts.color else ["labels", "objects"]
    if settings.runtime.instances:
        kinds += ["instances", "instance_objects"]
    if settings.runtime.publish_features:
        kinds += ["features"]
    names_of = bag_io.output_topics
    if settings.runtime.instances and settings.runtime.semantic_inference:
        names_of = _with_semantic_topics
        kinds += ["feature_image", "feature_vector"]
        types.update(feature_image=bag_io.FEATURE_IMAGE,
                     feature_vector=bag_io.FEATURE_VECTOR_STAMPED)
    vision_off = bag_io.vision_missing(ts)
    if vision_off is None:
        kinds += ["detections", "label_info"]
    else:
        log.warning("/cass/<cam>/detections and /cass/<cam>/label_info are not written: %s",
                    vision_off)
    for s in plan.streams.values():
        names = names_of(s.camera)
        for kind in kinds:
            s.outputs[kind] = writer.add_connection(
                names[kind], types[kind], typestore=ts,
                offered_qos_profiles=latched if kind == "label_info" else reliable)
    copies = {}
    if opts.copy_input:
        copies = {c.id: _copy_connection(writer, c, ts) for c in bag.connections}
    ctx = _Run(opts, settings, segmenter, ts, writer, classes_conn, plan.streams, copies,
               summary, BagToolReport())
    if settings.session.active is not None:
        if opts.frame_range is None or opts.frame_range[0] == 0:
            _write_class_table(ctx, bag.start_time)
        else:  # a later chunk: the class table is the first chunk's
            _write_color_tables(ctx)
    return ctx


def _with_semantic_topics(camera: str) -> dict[str, str]:
    """A camera's output topics with semantic_inference's two, named as the
    node names them (ros.outputs.semantic_inference, relative to the
    node's namespace: / offline)."""
    return dict(bag_io.output_topics(camera),
                feature_image=f"/cass/{camera}/{si.FEATURE_IMAGE_TOPIC}",
                feature_vector=f"/cass/{camera}/{si.FEATURE_VECTOR_TOPIC}")


def _copy_connection(writer: Writer, conn: Connection, ts: Typestore) -> Connection:
    """The same topic in the output bag, keeping the input's definition."""
    qos = list(getattr(conn.ext, "offered_qos_profiles", []) or [])
    if conn.digest and conn.msgdef.format == MessageDefinitionFormat.MSG and conn.msgdef.data:
        return writer.add_connection(conn.topic, conn.msgtype, msgdef=conn.msgdef.data,
                                     rihs01=conn.digest, offered_qos_profiles=qos)
    return writer.add_connection(conn.topic, conn.msgtype, typestore=ts,
                                 offered_qos_profiles=qos)


def _write_class_table(ctx: _Run, t_ns: int) -> None:
    active = ctx.settings.session.active
    assert active is not None
    header = bag_io.header_msg(ctx.ts, t_ns, "")
    msg = bag_io.class_table_msg(ctx.ts, header, active.prompt_set, active.prompt_id)
    ctx.writer.write(ctx.classes_conn, t_ns, ctx.ts.serialize_cdr(msg, bag_io.CLASS_TABLE))
    # label_info: the class map under the class table's header, as the node sends it
    info = None
    for s in ctx.streams.values():
        if "label_info" in s.outputs:
            info = info or ctx.ts.serialize_cdr(bag_io.label_info_msg(
                ctx.ts, header, active.prompt_set, ctx.settings.config.prob_threshold),
                bag_io.LABEL_INFO_TYPE)
            ctx.writer.write(s.outputs["label_info"], t_ns, info)
    _write_color_tables(ctx)


def _write_color_tables(ctx: _Run) -> None:
    """The active set's colour table into the output bag folder (the module
    docstring names the files). The writer has made the folder by now."""
    active = ctx.settings.session.active
    assert active is not None
    folder = Path(ctx.opts.out)
    try:
        for name in (COLOR_TABLE_PER_SET.format(prompt_id=active.prompt_id), COLOR_TABLE_NAME):
            write_color_table(folder / name, active.class_names, active.colors)
    except OSError as e:
        raise bag_io.BagError(str(e)) from None


# ---------------------------------------------------------------- the pass over the messages


def _process(ctx: _Run, bag: bag_io.InputBag, plan: _Plan) -> None:
    """Every wanted message in bag order: copies, prompt changes, frames."""
    wanted = [c for c in bag.connections
              if c.topic in ctx.streams or c.id in plan.prompt_ids or c.id in ctx.copies]
    opts = ctx.opts
    total = plan.frames
    if opts.frame_range is not None:
        first, end = opts.frame_range
        total = max(0, (total if end is None else min(end, total)) - first)
    events = _events(ctx, bag.messages(wanted), plan)
    stop = threading.Event()
    if opts.prefetch > 0:
        events = _read_ahead(events, opts.prefetch, stop)
    try:
        with tqdm(total=total, unit="frame", desc="cass_bag", disable=not opts.progress,
                  dynamic_ncols=True) as bar:
            for event in events:
                if isinstance(event, _FrameEvent):
                    bar.update(1)
                    if opts.on_frame is not None:
                        opts.on_frame()
                    _on_frame(ctx, event)
                elif isinstance(event, _PromptEvent):
                    _on_prompt(ctx, event.t_ns, event.raw, event.before)
                else:
                    conn_id, t_ns, raw = event
                    ctx.writer.write(ctx.copies[conn_id], t_ns, raw)
            _flush(ctx)
    finally:
        stop.set()  # a reading thread still running ends at its next frame


@dataclass
class _FrameEvent:
    """An input image read (and decoded: ``rgb``, else ``error``)."""

    stream: _Stream
    t_ns: int
    index: int                         # its place on its topic
    header: Any
    rgb: np.ndarray | None
    error: str = ""


@dataclass
class _PromptEvent:
    t_ns: int
    raw: bytes
    before: bool                       # before the frame range: applied, not written


def _events(ctx: _Run, messages: Iterator[tuple[Connection, int, bytes]], plan: _Plan
            ) -> Iterator[_FrameEvent | _PromptEvent | tuple[int, int, bytes]]:
    """The input's messages as the pass handles them: frames read and
    decoded, prompt messages, copies ((connection id, time, raw)). Reads
    nothing of the run's state but the plan, so that it may run in a
    thread (``prefetch``). With a frame range, a message belongs to it when
    the frames before it number from start to stop - 1: the messages
    between two chunks go with the later one, as the frame after them."""
    start, stop = ctx.opts.frame_range or (0, None)
    counts = dict.fromkeys(ctx.streams, 0)
    seen = 0                           # frames of the chosen topics before this message
    for conn, t_ns, raw in messages:
        if stop is not None and seen >= stop:
            return
        if seen < start:               # before the range: only the prompts matter
            if conn.id in plan.prompt_ids:
                yield _PromptEvent(t_ns, raw, True)
            elif conn.topic in ctx.streams:
                counts[conn.topic] += 1
                seen += 1
            continue
        if conn.id in ctx.copies:
            yield conn.id, t_ns, raw
        if conn.id in plan.prompt_ids:
            yield _PromptEvent(t_ns, raw, False)
        elif conn.topic in ctx.streams:
            s = ctx.streams[conn.topic]
            index = counts[conn.topic]
            counts[conn.topic] += 1
            seen += 1
            msg = ctx.ts.deserialize_cdr(raw, s.msgtype)
            try:
                yield _FrameEvent(s, t_ns, index, msg.header, bag_io.image_to_rgb(msg))
            except ImageConversionError as e:
                yield _FrameEvent(s, t_ns, index, msg.header, None, str(e))


def _read_ahead(events: Iterator[Any], depth: int, stop: threading.Event) -> Iterator[Any]:
    """``events`` produced by a thread up to ``depth`` ahead of the caller,
    so that reading and decoding overlap the model (cass_fleet's workers).
    The thread's errors are raised here; setting ``stop`` ends it."""
    box: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for event in events:
                if not put(("event", event)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
            put(("error", e))
            return
        put(("end", None))

    thread = threading.Thread(target=produce, name="cass_bag-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = box.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _on_prompt(ctx: _Run, t_ns: int, raw: bytes, before: bool = False) -> None:
    """A /cass/prompts message: validated and numbered by the PromptSession
    the node uses (docs/ros-interface.md, Prompts); it applies from the next
    frame on. ``before`` a frame range it is put in force without being
    written or counted (the chunk's prompt_ids go on from there)."""
    session, report = ctx.settings.session, ctx.report
    _flush(ctx)  # the frames before it keep the prompts they came under
    text = ctx.ts.deserialize_cdr(raw, bag_io.STRING).data
    try:
        prompt_set = build_prompt_set(parse_prompt_text(text),
                                      ctx.settings.config.background_classes)
        if not session.request(prompt_set):
            return  # the node ignores a repeat of the set last asked for
    except PromptError as e:
        if not before:
            report.prompts_rejected += 1
            log.warning("prompt message at %.3f s rejected, classes kept: %s", t_ns / 1e9, e)
        return
    active = session.activate(ctx.segmenter, prompt_set)
    if before:
        _write_color_tables(ctx)
        return
    report.prompts_accepted += 1
    log.info("prompts at %.3f s: %s (prompt_id %d)", t_ns / 1e9,
             ", ".join(active.class_names[1:]), active.prompt_id)
    _write_class_table(ctx, t_ns)


def _on_frame(ctx: _Run, frame: _FrameEvent) -> None:
    """Queue a decoded frame; a full batch is segmented (``_flush``)."""
    report = ctx.report
    report.frames_in += 1
    active = ctx.settings.session.active
    if active is None:
        report.frames_without_prompts += 1
        return
    if frame.rgb is None:
        report.frames_bad += 1
        if report.frames_bad <= 5:
            log.warning("%s frame %d skipped: %s", frame.stream.topic, frame.index, frame.error)
        return
    ctx.pending.append(_Pending(frame.stream, frame.header, frame.t_ns, frame.index, frame.rgb))
    if len(ctx.pending) >= ctx.opts.batch:
        _flush(ctx)


def _flush(ctx: _Run) -> None:
    """Segment the queued frames in one call, all under the prompts in
    force (a prompt message flushes first), and write their outputs in
    input order."""
    pending, ctx.pending = ctx.pending, []
    if not pending:
        return
    active, report = ctx.settings.session.active, ctx.report
    assert active is not None  # frames are queued only under prompts
    runtime = ctx.settings.runtime
    results, features = ctx.segmenter.segment_keeping(
        [p.rgb for p in pending], prompts=active.prepared, output_size=runtime.output_size,
        streams=_stream_frames(ctx, pending))
    dense = _dense(ctx, features, len(pending))
    for p, result, d in zip(pending, results, dense):
        _write_outputs(ctx, p.stream, _Frame(p.header, p.t_ns, p.index, p.rgb, result, d),
                       active.colors)
        ctx.prompt_ids.add(int(result.prompt_id))
        report.frames_out += 1
        report.per_topic[p.stream.topic] = report.per_topic.get(p.stream.topic, 0) + 1


def _dense(ctx: _Run, features: ImageFeatures | None, n: int) -> list[DenseFeatures | None]:
    """Each frame's dense features (docs/algorithm.md 10.1) where one of
    its outputs needs them, as the node's frame worker decides it
    (outputs.features.needs_dense); offline nothing subscribes, so the
    features topic is wanted exactly when ``publish_features`` says so."""
    runtime = ctx.settings.runtime
    if features is None:
        return [None] * n
    return frame_dense(features, ctx.segmenter.clip.patch,
                       [needs_dense(runtime, runtime.publish_features)] * n)


def _stream_frames(ctx: _Run, pending: Sequence[_Pending]) -> list[StreamFrame] | None:
    """Each frame's temporal stream (one per input topic) on its header
    stamp, as the node's frame worker does; None while off. Frames of one
    topic stay in input order in a batch, the order the segmenter applies."""
    runtime = ctx.settings.runtime
    return ctx.temporal.frames(
        [p.stream.topic for p in pending],
        [stamp_seconds(p.header.stamp.sec, p.header.stamp.nanosec) for p in pending],
        runtime.temporal(), runtime.min_pixels)


def _write_outputs(ctx: _Run, s: _Stream, frame: _Frame, colors: np.ndarray) -> None:
    """The node's outputs for one frame, at its bag time with its header."""
    ts, header, labels = ctx.ts, frame.header, frame.result.labels
    runtime = ctx.settings.runtime
    msg = bag_io.label_image_msg(ts, header, labels)
    ctx.writer.write(s.outputs["labels"], frame.t_ns, ts.serialize_cdr(msg, bag_io.IMAGE))
    if "features" in s.outputs and frame.dense is not None:
        models = ctx.segmenter.models
        fmsg = bag_io.features_msg(ts, header, features_fields(
            frame.dense, labels.shape, models.clip_id, models.weights_sha256(),
            runtime.features_dtype))
        ctx.writer.write(s.outputs["features"], frame.t_ns,
                         ts.serialize_cdr(fmsg, bag_io.FEATURES))
    objs = _write_instances(ctx, s, frame)
    if "color" in s.outputs or ctx.opts.overlays is not None:
        _write_overlay(ctx, s, frame, colors, objs)
    omsg = bag_io.objects_msg(ts, header, frame.result, runtime.min_pixels)
    ctx.writer.write(s.outputs["objects"], frame.t_ns, ts.serialize_cdr(omsg, bag_io.OBJECTS))
    if "detections" in s.outputs:
        if objs is not None and runtime.detections_per == "instance":
            dmsg = bag_io.detections_from_fields(ts, header, instance_detection_fields(
                objs, frame.result.class_names))
        else:
            dmsg = bag_io.detections_msg(ts, header, frame.result, runtime.min_pixels)
        ctx.writer.write(s.outputs["detections"], frame.t_ns,
                         ts.serialize_cdr(dmsg, bag_io.DETECTIONS_TYPE))
    if ctx.summary is not None:
        ns = bag_io.stamp_ns(header.stamp)
        ctx.summary.add(bag_io.summary_row(
            omsg, image=f"{s.topic}@{bag_io.stamp_text(ns)}", topic=s.topic, camera=s.camera,
            index=frame.index, timings_ms=frame.result.timings_ms, size=frame.result.size))


def _write_instances(ctx: _Run, s: _Stream, frame: _Frame) -> FrameObjects | None:
    """Instances and tracks (docs/ros-interface.md, "Instances and tracks"):
    one tracker per input topic in the registry of the temporal streams, on
    the header stamps, as the node keeps one per camera; None while off."""
    runtime, ts = ctx.settings.runtime, ctx.ts
    if not runtime.instances:
        return None
    tracker = ctx.temporal.tracker(s.topic, runtime.track_params())
    stamp = stamp_seconds(frame.header.stamp.sec, frame.header.stamp.nanosec)
    # with the frame's dense features: pooled per instance, handed to the
    # tracker (re-identification) and, with instance_embeddings, written
    objs = frame_objects(frame.result, runtime, tracker, stamp, None, runtime.depth_trim_percent,
                         frame.dense)
    image = bag_io.image_from_fields(ts, frame.header,
                                     instance_image_fields(frame.result.labels, objs))
    ctx.writer.write(s.outputs["instances"], frame.t_ns, ts.serialize_cdr(image, bag_io.IMAGE))
    imsg = bag_io.instance_array_msg(ts, frame.header, frame.result, instance_fields(
        objs, frame.result.class_names, runtime.instance_embeddings and frame.dense is not None))
    ctx.writer.write(s.outputs["instance_objects"], frame.t_ns,
                     ts.serialize_cdr(imsg, bag_io.INSTANCES))
    if "feature_image" in s.outputs and frame.dense is not None:
        fimg = bag_io.feature_image_msg(ts, frame.header, si.feature_image_fields(objs))
        ctx.writer.write(s.outputs["feature_image"], frame.t_ns,
                         ts.serialize_cdr(fimg, bag_io.FEATURE_IMAGE))
        fvec = bag_io.feature_vector_msg(ts, frame.header,
                                         si.feature_vector_fields(frame.dense.image))
        ctx.writer.write(s.outputs["feature_vector"], frame.t_ns,
                         ts.serialize_cdr(fvec, bag_io.FEATURE_VECTOR_STAMPED))
    return objs


def _write_overlay(ctx: _Run, s: _Stream, frame: _Frame, colors: np.ndarray,
                   objs: FrameObjects | None = None) -> None:
    """The colour overlay: the /segmentation/color topic and the --overlays PNGs."""
    labels, base = frame.result.labels, frame.rgb
    if base.shape[:2] != labels.shape:  # output_size: model, resized as the node does
        # preprocess imports torch: off the module's imports, as in _load_segmenter
        from ..core.preprocess import resize_short_side

        base = resize_short_side(base, ctx.settings.config.short_side)
    blended = overlay(base, labels, colors, ctx.settings.runtime.color_alpha)
    if objs is not None and ctx.settings.runtime.overlay_instance_outline:
        blended = outline_instances(blended, objs.index)
    if ctx.settings.runtime.overlay_legend:
        blended = draw_legend(blended, frame.result.class_names, colors)
    if "color" in s.outputs:
        cmsg = bag_io.color_image_msg(ctx.ts, frame.header, blended)
        ctx.writer.write(s.outputs["color"], frame.t_ns, ctx.ts.serialize_cdr(cmsg, bag_io.IMAGE))
    if ctx.opts.overlays is not None:
        stem = Path(ctx.opts.overlays) / s.camera / f"{frame.index:06d}"
        bag_io.write_png(f"{stem}_overlay.png", blended)
        bag_io.write_png(f"{stem}_labels.png", labels)


def _warn_skipped(report: BagToolReport, settings: _Settings) -> None:
    if report.frames_without_prompts:
        log.warning("%d frame(s) before the first prompt message were not segmented: %s",
                    report.frames_without_prompts, settings.no_prompt_reason)
    if report.frames_bad:
        log.warning("%d frame(s) could not be decoded and were skipped", report.frames_bad)
