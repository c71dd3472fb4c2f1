"""Messages <-> plain arrays. Every malformed input raises ValueError with a clear reason.

Each reason starts with its cause and a colon ("encoding: ...", "depth: ...", "stamp: ..."),
so a node can log each cause once (throttled) however the details vary.

Readers work on any object with the messages' field names: rclpy messages in the nodes and
rosbags' dataclasses in the offline tools (``m3_ros.cli``), so this module imports no ROS
package at module level; the few functions that build rclpy messages import them lazily.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from m3_ros.geometry import matrix_to_pose, pose_to_matrix
from m3_ros.types import Instance

if TYPE_CHECKING:
    from builtin_interfaces.msg import Time
    from geometry_msgs.msg import Pose, Transform
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from std_msgs.msg import Header

_FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32
QUAT_NORM_TOL = 1e-2
"""A quaternion whose norm is further than this from 1 is refused (a slightly off one is normalised)."""

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1,
             "32FC1": 1, "16UC1": 1, "mono16": 1, "32SC1": 1}
_DTYPES = {"rgb8": np.uint8, "bgr8": np.uint8, "rgba8": np.uint8, "bgra8": np.uint8,
           "mono8": np.uint8, "8UC1": np.uint8, "32FC1": np.float32, "16UC1": np.uint16,
           "mono16": np.uint16, "32SC1": np.int32}


def stamp_to_sec(stamp: Time) -> float:
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def sec_to_stamp(t: float) -> Time:
    from builtin_interfaces.msg import Time
    sec = int(np.floor(t))
    return Time(sec=sec, nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000)


def image_to_array(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> [H, W] or [H, W, C] array (a copy), honouring step and endianness."""
    enc = msg.encoding
    if enc not in _CHANNELS:
        raise ValueError(f"encoding: unsupported image encoding '{enc}' (supported: {', '.join(sorted(_CHANNELS))})")
    if msg.height == 0 or msg.width == 0:
        raise ValueError(f"image size: empty image {msg.width}x{msg.height}")
    dtype = np.dtype(_DTYPES[enc]).newbyteorder(">" if msg.is_bigendian else "<")
    ch = _CHANNELS[enc]
    row_bytes = msg.width * ch * dtype.itemsize
    if msg.step < row_bytes or len(msg.data) < msg.step * msg.height:
        raise ValueError(f"image size: image {msg.width}x{msg.height} '{enc}' has step {msg.step} and "
                         f"{len(msg.data)} bytes; needs step >= {row_bytes} and {row_bytes * msg.height} bytes")
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8, count=msg.step * msg.height)
    rows = buf.reshape(msg.height, msg.step)[:, :row_bytes]
    arr = np.ascontiguousarray(rows).view(dtype).reshape(msg.height, msg.width, ch)
    arr = arr.astype(dtype.newbyteorder("="))
    return arr[..., 0] if ch == 1 else arr


def rgb_from_image(msg: Image) -> np.ndarray:
    """Colour image -> [H, W, 3] uint8 RGB."""
    arr = image_to_array(msg)
    if msg.encoding in ("rgb8", "rgba8"):
        return np.ascontiguousarray(arr[..., :3])
    if msg.encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(arr[..., 2::-1])
    raise ValueError(f"encoding: colour image must be rgb8/bgr8/rgba8/bgra8, got '{msg.encoding}'")


def depth_from_image(msg: Image) -> np.ndarray:
    """Depth image (32FC1 metres or 16UC1 millimetres) -> [H, W] float32 metres, 0 = no return.

    Zero, NaN, +-inf and negative values all mean "no return" (drivers use each of them); an
    image without a single valid pixel is refused.
    """
    arr = image_to_array(msg)
    if msg.encoding == "32FC1":
        d = arr.astype(np.float32)
    elif msg.encoding in ("16UC1", "mono16"):
        d = arr.astype(np.float32) * 1e-3
    else:
        raise ValueError(f"encoding: depth image must be 32FC1 (m) or 16UC1 (mm), got '{msg.encoding}'")
    d[~np.isfinite(d) | (d < 0)] = 0.0
    if not np.any(d > 0):
        raise ValueError(f"depth: no valid pixel in the {d.shape[1]}x{d.shape[0]} depth image (all zero, NaN or inf)")
    return d


def array_to_image(arr: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """[H, W] / [H, W, C] array -> sensor_msgs/Image with the given encoding."""
    from sensor_msgs.msg import Image
    if encoding not in _CHANNELS:
        raise ValueError(f"unsupported image encoding '{encoding}'")
    arr = np.ascontiguousarray(arr, dtype=_DTYPES[encoding])
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * _CHANNELS[encoding] * arr.dtype.itemsize
    msg.data = arr.tobytes()
    return msg


def intrinsics_from_camera_info(msg: CameraInfo) -> np.ndarray:
    """CameraInfo -> K [3, 3]; ValueError when K is unset or not finite, or the images are distorted.

    The memory renders with a pinhole camera: a camera_info with non-zero distortion D describes
    raw images, which would have to be rectified first (image_proc's ``image_rect``, whose
    camera_info carries D = 0).
    """
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"camera_info K: K is missing or invalid: {K.ravel().tolist()}")
    D = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    if D.size and (not np.all(np.isfinite(D)) or np.any(np.abs(D) > 1e-9)):
        raise ValueError(f"camera_info distortion: distorted images are not supported (distortion_model "
                         f"'{msg.distortion_model}', D = {D.tolist()}); subscribe to rectified images "
                         "(image_proc's image_rect) whose camera_info has zero D")
    return K


def check_camera_info_size(info: CameraInfo, image_hw: tuple[int, int]) -> None:
    """ValueError when camera_info's width x height (if set) is not the image's size."""
    w, h = int(info.width), int(info.height)
    if (w or h) and (h, w) != tuple(image_hw):
        raise ValueError(f"camera_info size: camera_info is {w}x{h} but the colour image is "
                         f"{image_hw[1]}x{image_hw[0]}")


def _unit_quat(q, what: str) -> list[float]:
    """ROS quaternion (x, y, z, w) -> normalised list; ValueError for NaN/inf or a non-unit one."""
    arr = np.asarray([q.x, q.y, q.z, q.w], dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"quaternion: {what} orientation has non-finite values {arr.tolist()}")
    n = float(np.linalg.norm(arr))
    if abs(n - 1.0) > QUAT_NORM_TOL:
        raise ValueError(f"quaternion: {what} orientation {arr.tolist()} is not a unit quaternion (norm {n:.4g})")
    return (arr / n).tolist()


def _finite_xyz(v, what: str) -> list[float]:
    arr = [float(v.x), float(v.y), float(v.z)]
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"pose: {what} position has non-finite values {arr}")
    return arr


def pose_msg_to_matrix(pose: Pose, what: str = "odometry") -> np.ndarray:
    """geometry_msgs/Pose -> T [4, 4]; ValueError for NaN/inf values or a non-unit quaternion."""
    return pose_to_matrix(_finite_xyz(pose.position, what), _unit_quat(pose.orientation, what))


def transform_msg_to_matrix(tf: Transform, what: str = "transform") -> np.ndarray:
    """geometry_msgs/Transform -> T [4, 4]; ValueError for NaN/inf values or a non-unit quaternion."""
    return pose_to_matrix(_finite_xyz(tf.translation, what), _unit_quat(tf.rotation, what))


class StampChecks:
    """Per-stream stamp validation: refuse stamps out of order or far ahead of the receiver's clock.

    A stream whose stamps jump back by more than ``jump_back_s`` (a bag played again, a simulator
    restarted) starts over instead of being refused forever; ``jumped`` tells the caller so it can
    reset its own time-ordered state.
    """

    def __init__(self, max_future_s: float = 10.0, jump_back_s: float = 5.0):
        self.max_future_s = float(max_future_s)
        self.jump_back_s = float(jump_back_s)
        self.last: dict[str, float] = {}
        self.jumped = False

    def check(self, stream: str, t: float, now: float | None) -> None:
        """Accept stamp t (s) of stream, or raise ValueError. now: the receiver's clock (None = unknown)."""
        self.jumped = False
        if not np.isfinite(t):
            raise ValueError(f"stamp: {stream} stamp is not finite ({t})")
        if now is not None and t > now + self.max_future_s:
            raise ValueError(f"stamp: {stream} stamp {t:.3f} is {t - now:.1f} s ahead of this node's clock "
                             f"(more than {self.max_future_s:g} s in the future)")
        last = self.last.get(stream)
        if last is not None and t < last:
            if last - t <= self.jump_back_s:
                raise ValueError(f"stamp: {stream} stamp {t:.3f} is older than the previous one "
                                 f"({last:.3f}): out of order")
            self.jumped = True
        self.last[stream] = t


def matrix_to_pose_msg(T: np.ndarray) -> Pose:
    from geometry_msgs.msg import Pose
    t, q = matrix_to_pose(T)
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in t)
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (float(v) for v in q)
    return pose


def instances_from_msg(msg, image_size: tuple[int, int]) -> list[Instance]:
    """m3_ros/LabeledInstanceArray -> Instances; masks must match the colour image size (H, W)."""
    out = []
    for inst in msg.instances:
        mask = image_to_array(inst.mask)
        if mask.ndim != 2 or mask.shape != tuple(image_size):
            raise ValueError(f"instances: instance {inst.id} ('{inst.label}') mask is {mask.shape}, "
                             f"colour image is {tuple(image_size)}")
        if not inst.label.strip():
            raise ValueError(f"instances: instance {inst.id} has an empty label")
        out.append(Instance(mask=mask > 0, label=inst.label, score=float(inst.score), id=int(inst.id)))
    return out


def points_to_cloud(points: np.ndarray, header: Header, rgb: np.ndarray | None = None) -> PointCloud2:
    """points [N, 3] (+ optional rgb [N, 3] in 0..1) -> PointCloud2 (x, y, z float32, rgb packed float)."""
    from sensor_msgs.msg import PointCloud2, PointField
    n = int(points.shape[0])
    fields = [PointField(name=c, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, c in enumerate("xyz")]
    cols = [np.asarray(points, dtype=np.float32)]
    if rgb is not None:
        c8 = np.clip(np.asarray(rgb) * 255.0, 0, 255).astype(np.uint32)
        packed = ((c8[:, 0] << 16) | (c8[:, 1] << 8) | c8[:, 2]).view(np.float32)[:, None]
        fields.append(PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1))
        cols.append(packed)
    data = np.ascontiguousarray(np.concatenate(cols, axis=1), dtype=np.float32)
    msg = PointCloud2(header=header, height=1, width=n, fields=fields, is_bigendian=False,
                      point_step=4 * data.shape[1], row_step=4 * data.shape[1] * n, is_dense=True)
    msg.data = data.tobytes()
    return msg


def cloud_to_points(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 with float32 x, y, z fields -> points [N, 3]."""
    offs = {f.name: f.offset for f in msg.fields if f.datatype == _FLOAT32}
    if not all(c in offs for c in "xyz"):
        raise ValueError(f"point cloud lacks float32 x/y/z fields: {[f.name for f in msg.fields]}")
    n = msg.width * msg.height
    if msg.point_step == 0 or len(msg.data) < n * msg.point_step:
        raise ValueError("point cloud data is shorter than width*height*point_step")
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8, count=n * msg.point_step).reshape(n, msg.point_step)
    cols = [raw[:, offs[c]:offs[c] + 4].copy().view(np.float32)[:, 0] for c in "xyz"]
    return np.stack(cols, axis=1).astype(np.float64)
