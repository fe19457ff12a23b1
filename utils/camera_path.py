"""A smooth camera path through keyframe poses (for fly-through videos of a trained model).

Poses are world-to-camera 4x4 matrices (COLMAP / OpenCV axes, as `scene.cameras.Camera` holds them).
Between consecutive keyframes the camera *centre* moves linearly and the camera *orientation* is
interpolated by quaternion slerp (shortest arc), so the path passes exactly through every keyframe.
numpy only, float64; no dependence on `scene/`.
"""
import numpy as np

__all__ = ["rotation_to_quaternion", "quaternion_to_rotation_np", "slerp", "interpolate_poses"]


def rotation_to_quaternion(R):
    """3x3 rotation matrix -> unit quaternion (w, x, y, z) with w >= 0.

    Shepperd's method: divide by the largest of the four diagonal combinations, so no branch
    divides by a number near zero.
    """
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    d = np.array([tr, R[0, 0], R[1, 1], R[2, 2]])
    k = int(np.argmax(d))
    if k == 0:
        s = 2.0 * np.sqrt(max(1.0 + tr, 0.0))
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif k == 1:
        s = 2.0 * np.sqrt(max(1.0 + R[0, 0] - R[1, 1] - R[2, 2], 0.0))
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif k == 2:
        s = 2.0 * np.sqrt(max(1.0 - R[0, 0] + R[1, 1] - R[2, 2], 0.0))
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(max(1.0 - R[0, 0] - R[1, 1] + R[2, 2], 0.0))
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def quaternion_to_rotation_np(q):
    """Quaternion (w, x, y, z), any non-zero norm -> 3x3 rotation matrix (float64)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def slerp(q0, q1, t):
    """Spherical linear interpolation of unit quaternions along the shorter arc; t in [0, 1].

    slerp(q0, q1, 0) = q0 and slerp(q0, q1, 1) = +-q1 (the same rotation). Nearly equal
    quaternions fall back to normalised linear interpolation (sin(theta) -> 0).
    """
    q0 = np.asarray(q0, dtype=np.float64) / np.linalg.norm(q0)
    q1 = np.asarray(q1, dtype=np.float64) / np.linalg.norm(q1)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are the same rotation; take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(min(dot, 1.0))
    s = np.sin(theta)
    return (np.sin((1.0 - t) * theta) * q0 + np.sin(t * theta) * q1) / s


def interpolate_poses(world_to_cameras, num_frames):
    """`num_frames` world-to-camera matrices [num_frames, 4, 4] along the keyframes' path.

    world_to_cameras: [K, 4, 4] (K >= 1) keyframes in path order. Frame f sits at the path
    parameter s = f (K - 1) / (num_frames - 1): frame 0 is the first keyframe, the last frame the
    last one, and with num_frames = K every frame is a keyframe. Segments get equal frame counts
    regardless of their length (keyframes are the capture's photos, roughly evenly spaced).
    """
    keys = np.asarray(world_to_cameras, dtype=np.float64)
    if keys.ndim != 3 or keys.shape[1:] != (4, 4) or len(keys) == 0:
        raise ValueError(f"expected keyframe poses [K, 4, 4] with K >= 1, got shape {keys.shape}")
    num_frames = int(num_frames)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    rots_c2w = keys[:, :3, :3].transpose(0, 2, 1)
    centres = -np.einsum("kji,kj->ki", keys[:, :3, :3], keys[:, :3, 3])  # -R^T t
    quats = [rotation_to_quaternion(R) for R in rots_c2w]
    k = len(keys)
    out = np.zeros((num_frames, 4, 4))
    out[:, 3, 3] = 1.0
    for f in range(num_frames):
        s = 0.0 if num_frames == 1 or k == 1 else f * (k - 1) / (num_frames - 1)
        i = min(int(np.floor(s)), k - 2) if k > 1 else 0
        t = s - i
        if k == 1 or t == 0.0:
            R_c2w, c = rots_c2w[i], centres[i]
        elif t == 1.0:
            R_c2w, c = rots_c2w[i + 1], centres[i + 1]
        else:
            R_c2w = quaternion_to_rotation_np(slerp(quats[i], quats[i + 1], t))
            c = (1.0 - t) * centres[i] + t * centres[i + 1]
        out[f, :3, :3] = R_c2w.T
        out[f, :3, 3] = -R_c2w.T @ c
    return out
