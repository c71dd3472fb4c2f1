"""rosbag2 writing and reading with ``rosbags`` (pure Python: no ROS install is needed).

Messages are rosbags' own dataclasses from the ROS 2 Jazzy typestore, plus this package's
``m3_ros/msg/LabeledInstance(Array)`` registered from the ``.msg`` files. They have the same
field names as the rclpy messages, so ``m3_ros.nodes.convert`` validates both alike.

Topics (absolute, as ``ros2 bag record`` stores them); ``--topics KEY=NAME`` remaps each:

=============  ===============================  ==============================
key            default topic                    type
=============  ===============================  ==============================
color          /camera/color/image_raw          sensor_msgs/msg/Image (rgb8/bgr8)
depth          /camera/depth/image_raw          sensor_msgs/msg/Image (32FC1 m / 16UC1 mm)
camera_info    /camera/color/camera_info        sensor_msgs/msg/CameraInfo
odom           /odom                            nav_msgs/msg/Odometry (odom -> base_link)
instances      /camera/instances                m3_ros/msg/LabeledInstanceArray
mount          /camera/mount                    geometry_msgs/msg/TransformStamped
tf             /tf                              tf2_msgs/msg/TFMessage
tf_static      /tf_static                       tf2_msgs/msg/TFMessage
clock          /clock                           rosgraph_msgs/msg/Clock
=============  ===============================  ==============================
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from m3_ros.geometry import invert, matrix_to_pose

MSG_DIR = Path(__file__).resolve().parent.parent.parent / "msg"

DEFAULT_TOPICS: dict[str, str] = {
    "color": "/camera/color/image_raw",
    "depth": "/camera/depth/image_raw",
    "camera_info": "/camera/color/camera_info",
    "odom": "/odom",
    "instances": "/camera/instances",
    "mount": "/camera/mount",
    "tf": "/tf",
    "tf_static": "/tf_static",
    "clock": "/clock",
}
TYPES: dict[str, str] = {
    "color": "sensor_msgs/msg/Image",
    "depth": "sensor_msgs/msg/Image",
    "camera_info": "sensor_msgs/msg/CameraInfo",
    "odom": "nav_msgs/msg/Odometry",
    "instances": "m3_ros/msg/LabeledInstanceArray",
    "mount": "geometry_msgs/msg/TransformStamped",
    "tf": "tf2_msgs/msg/TFMessage",
    "tf_static": "tf2_msgs/msg/TFMessage",
    "clock": "rosgraph_msgs/msg/Clock",
}


class BagError(ValueError):
    """A bag that cannot be read or lacks what the memory needs."""


def parse_topics(items: list[str] | None) -> dict[str, str]:
    """``["color=/x", "odom=/y"]`` -> the default topic table with those keys replaced."""
    topics = dict(DEFAULT_TOPICS)
    for item in items or []:
        key, sep, name = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--topics entries are KEY=TOPIC, got {item!r}")
        if key not in topics:
            raise ValueError(f"unknown topic key {key!r} in --topics (known: {', '.join(DEFAULT_TOPICS)})")
        topics[key] = name if name.startswith("/") else "/" + name
    return topics


def typestore():
    """Jazzy typestore (knows tf2_msgs, rosgraph_msgs) plus m3_ros/msg/LabeledInstance(Array)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    store = get_typestore(Stores.ROS2_JAZZY)
    add = {}
    for name in ("LabeledInstance", "LabeledInstanceArray"):
        add.update(get_types_from_msg((MSG_DIR / f"{name}.msg").read_text(), f"m3_ros/msg/{name}"))
    store.register(add)
    return store


# ---- building messages (rosbags dataclasses) ------------------------------------------------
class MessageFactory:
    """Plain arrays -> rosbags message objects of one typestore."""

    def __init__(self, store):
        self.store = store
        self.T = store.types

    def stamp(self, t: float):
        sec = int(np.floor(t))
        return self.T["builtin_interfaces/msg/Time"](sec=sec, nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000)

    def header(self, t: float, frame_id: str):
        return self.T["std_msgs/msg/Header"](stamp=self.stamp(t), frame_id=frame_id)

    def image(self, t: float, frame_id: str, arr: np.ndarray, encoding: str):
        arr = np.ascontiguousarray(arr)
        return self.T["sensor_msgs/msg/Image"](
            header=self.header(t, frame_id), height=int(arr.shape[0]), width=int(arr.shape[1]),
            encoding=encoding, is_bigendian=0, step=int(arr.strides[0]),
            data=np.frombuffer(arr.tobytes(), dtype=np.uint8))

    def camera_info(self, t: float, frame_id: str, K: np.ndarray, width: int, height: int):
        K = np.asarray(K, dtype=np.float64)
        P = np.zeros((3, 4))
        P[:, :3] = K
        roi = self.T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return self.T["sensor_msgs/msg/CameraInfo"](
            header=self.header(t, frame_id), height=int(height), width=int(width), distortion_model="plumb_bob",
            d=np.zeros(5), k=K.reshape(-1).copy(), r=np.eye(3).reshape(-1), p=P.reshape(-1),
            binning_x=0, binning_y=0, roi=roi)

    def _vec(self, v):
        return self.T["geometry_msgs/msg/Vector3"](x=float(v[0]), y=float(v[1]), z=float(v[2]))

    def _quat(self, q):
        return self.T["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))

    def transform(self, t: float, parent: str, child: str, T: np.ndarray):
        pos, q = matrix_to_pose(T)
        tf = self.T["geometry_msgs/msg/Transform"](translation=self._vec(pos), rotation=self._quat(q))
        return self.T["geometry_msgs/msg/TransformStamped"](header=self.header(t, parent), child_frame_id=child,
                                                            transform=tf)

    def tf_message(self, transforms: list):
        return self.T["tf2_msgs/msg/TFMessage"](transforms=list(transforms))

    def odometry(self, t: float, parent: str, child: str, T: np.ndarray, lin: np.ndarray, ang: np.ndarray):
        pos, q = matrix_to_pose(T)
        pose = self.T["geometry_msgs/msg/Pose"](
            position=self.T["geometry_msgs/msg/Point"](x=float(pos[0]), y=float(pos[1]), z=float(pos[2])),
            orientation=self._quat(q))
        twist = self.T["geometry_msgs/msg/Twist"](linear=self._vec(lin), angular=self._vec(ang))
        return self.T["nav_msgs/msg/Odometry"](
            header=self.header(t, parent), child_frame_id=child,
            pose=self.T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
            twist=self.T["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=np.zeros(36)))

    def instances(self, t: float, frame_id: str, instances: list):
        items = [self.T["m3_ros/msg/LabeledInstance"](
            id=int(i.id), label=str(i.label), score=float(i.score),
            mask=self.image(t, frame_id, i.mask.astype(np.uint8) * 255, "mono8")) for i in instances]
        return self.T["m3_ros/msg/LabeledInstanceArray"](header=self.header(t, frame_id), instances=items)

    def clock(self, t: float):
        return self.T["rosgraph_msgs/msg/Clock"](clock=self.stamp(t))


class BagWriter:
    """A rosbag2 directory (mcap by default) written message by message; use as a context manager."""

    def __init__(self, path: Path, topics: dict[str, str], storage: str = "mcap"):
        from rosbags.rosbag2 import StoragePlugin, Writer
        self.store = typestore()
        self.msgs = MessageFactory(self.store)
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}.get(storage)
        if plugin is None:
            raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
        self.writer = Writer(path, version=9, storage_plugin=plugin)
        self.topics = topics
        self.counts: dict[str, int] = {}
        self._conns: dict[str, object] = {}

    def __enter__(self) -> "BagWriter":
        from rosbags.rosbag2 import WriterError
        try:
            self.writer.open()
        except WriterError as e:
            raise BagError(str(e)) from e
        for key, topic in self.topics.items():
            self._conns[key] = self.writer.add_connection(topic, TYPES[key], typestore=self.store)
        return self

    def write(self, key: str, t: float, msg) -> None:
        """Serialise one message at bag time t (seconds)."""
        data = self.store.serialize_cdr(msg, TYPES[key])
        self.writer.write(self._conns[key], int(round(t * 1e9)), data)
        self.counts[key] = self.counts.get(key, 0) + 1

    def __exit__(self, *exc: object) -> None:
        self.writer.close()


# ---- reading ----------------------------------------------------------------------------------
def stamp_sec(stamp) -> float:
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


class StaticTransforms:
    """Static frame graph from /tf_static (and the mount topic): compose a chain between two frames."""

    def __init__(self) -> None:
        self.edges: dict[tuple[str, str], np.ndarray] = {}  # (parent, child) -> T_parent_child

    def add(self, tf_msg) -> None:
        from m3_ros.nodes import convert
        self.edges[(tf_msg.header.frame_id.lstrip("/"), tf_msg.child_frame_id.lstrip("/"))] = (
            convert.transform_msg_to_matrix(tf_msg.transform))

    def lookup(self, target: str, source: str) -> np.ndarray | None:
        """T_target_source through the static graph (edges walked both ways), None when unconnected."""
        target, source = target.lstrip("/"), source.lstrip("/")
        adj: dict[str, list[tuple[str, np.ndarray]]] = {}
        for (a, b), T in self.edges.items():
            adj.setdefault(a, []).append((b, T))
            adj.setdefault(b, []).append((a, invert(T)))
        seen, stack = {target}, [(target, np.eye(4))]
        while stack:
            frame, T_target_frame = stack.pop()
            if frame == source:
                return T_target_frame
            for nxt, T in adj.get(frame, []):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, T_target_frame @ T))
        return None


@dataclass
class BagFrame:
    """One colour + depth pair with its odometry and (optional) labelled instances, as messages."""

    index: int  # position of the colour message in the frame stream (resume point)
    stamp: float
    color: object
    depth: object
    odom: object | None
    instances: object | None


class BagReader:
    """Reads a rosbag2 directory (mcap or sqlite3) with rosbags."""

    def __init__(self, path: Path, topics: dict[str, str]):
        from rosbags.rosbag2 import Reader
        path = Path(path)
        if not (path / "metadata.yaml").is_file():
            raise BagError(f"{path} is not a rosbag2 directory (no metadata.yaml)")
        self.path = path
        self.topics = topics
        self.store = typestore()
        try:
            self.reader = Reader(path)
            self.reader.open()
        except Exception as e:  # rosbags raises several types (ReaderError, yaml, sqlite, mcap errors)
            raise BagError(f"cannot open bag {path}: {type(e).__name__}: {e}") from e
        by_topic: dict[str, list] = {}
        for c in self.reader.connections:
            by_topic.setdefault(c.topic, []).append(c)
        self.conns = {key: by_topic.get(topic, []) for key, topic in topics.items()}
        for key in ("color", "depth", "odom"):
            if not self.conns[key]:
                raise BagError(f"bag {path} has no {key} topic {topics[key]!r} (topics in the bag: "
                               f"{sorted(by_topic)}); remap it with --topics {key}=TOPIC")

    def close(self) -> None:
        self.reader.close()

    def count(self, key: str) -> int:
        return sum(c.msgcount for c in self.conns[key])

    def _messages(self, keys: list[str]) -> Iterator[tuple[str, int, object]]:
        conns = [c for k in keys for c in self.conns[k]]
        key_of = {c.id: k for k in keys for c in self.conns[k]}
        for conn, t_ns, raw in self.reader.messages(connections=conns):
            key = key_of[conn.id]
            yield key, t_ns, self.store.deserialize_cdr(raw, conn.msgtype)

    def side_streams(self) -> tuple[list, list, StaticTransforms, object | None]:
        """(odometry messages, camera_info messages, static transforms, last mount) in one pass."""
        odom, infos, static, mount = [], [], StaticTransforms(), None
        keys = [k for k in ("odom", "camera_info", "tf_static", "mount") if self.conns[k]]
        for key, _, msg in self._messages(keys):
            if key == "odom":
                odom.append(msg)
            elif key == "camera_info":
                infos.append(msg)
            elif key == "tf_static":
                for tf in msg.transforms:
                    static.add(tf)
            else:
                mount = msg
        return odom, infos, static, mount

    def frames(self, slop: float = 0.05, instances_slop: float = 0.02, start: int = 0) -> Iterator[BagFrame]:
        """Colour frames paired with depth (nearest stamp within slop) and instances, in bag order.

        ``start`` skips colour frames before that index (resume). A frame is emitted once its
        depth arrived and, when the bag has an instance topic, its instances too (or the bag has
        moved 1 s past it).
        """
        keys = ["color", "depth"] + (["instances"] if self.conns["instances"] else [])
        pending: list[list] = []  # [index, stamp, color, depth, instances]
        depths: list[tuple[float, object]] = []
        insts: list[tuple[float, object]] = []
        n_color = 0
        has_inst = bool(self.conns["instances"])

        def nearest(buf, t, tol):
            if not buf:
                return None
            tb, m = min(buf, key=lambda e: abs(e[0] - t))
            return m if abs(tb - t) <= tol else None

        def ready(now: float, final: bool):
            out = []
            for p in list(pending):
                if p[3] is None:
                    p[3] = nearest(depths, p[1], slop)
                if has_inst and p[4] is None:
                    p[4] = nearest(insts, p[1], instances_slop)
                waited = final or now - p[1] > 1.0
                if p[3] is not None and (not has_inst or p[4] is not None or waited):
                    out.append(p)
                    pending.remove(p)
                elif waited:
                    pending.remove(p)  # no depth within slop: drop the colour frame
            return out

        for key, t_ns, msg in self._messages(keys):
            now = t_ns * 1e-9
            if key == "color":
                if n_color >= start:
                    pending.append([n_color, stamp_sec(msg.header.stamp), msg, None, None])
                n_color += 1
            elif key == "depth":
                depths.append((stamp_sec(msg.header.stamp), msg))
                depths = depths[-20:]
            else:
                insts.append((stamp_sec(msg.header.stamp), msg))
                insts = insts[-20:]
            for p in ready(now, False):
                yield BagFrame(p[0], p[1], p[2], p[3], None, p[4])
        for p in ready(float("inf"), True):
            yield BagFrame(p[0], p[1], p[2], p[3], None, p[4])


def nearest_odom(odom: list, stamps: np.ndarray, t: float, slop: float):
    """The odometry message nearest to t (within slop), else None. stamps [M] sorted."""
    if len(stamps) == 0:
        return None
    i = int(np.searchsorted(stamps, t))
    best = min((j for j in (i - 1, i) if 0 <= j < len(stamps)), key=lambda j: abs(stamps[j] - t))
    return odom[best] if abs(stamps[best] - t) <= slop else None

