"""View-dependent Gaussian colour from real spherical harmonics (degree 0..3), evaluated in PyTorch.

Storage ("colors" parameter):
    degree 0: [N, 3] logits of RGB (exactly the plain-colour form, so degree 0 is unchanged);
    degree D: [N, (D+1)^2, 3] coefficients, index 0 the DC term, then l = 1, 2, 3 in order m = -l..l.

Activation: rgb = sigmoid(sum_k Y_k(dir) c_k) with dir the unit vector from the camera centre to
the Gaussian mean. Two deliberate deviations from 3DGS's `SH * c + 0.5, clamp`: the DC basis
function is taken as 1 instead of C0 = 1 / (2 sqrt(pi)) (so the DC coefficient *is* the degree-0
logit and seeding writes it directly), and the sum passes through a sigmoid instead of a clamp (the
same parameterisation as degree 0, and gradients never vanish at a clamp). The l >= 1 basis
functions are the standard real SH (Condon-Shortley phase, as in 3DGS) with their usual constants.
"""
from __future__ import annotations

import math

import torch

MAX_SH_DEGREE = 3


def num_sh_bases(degree: int) -> int:
    """(degree + 1)^2 coefficients per colour channel."""
    check_sh_degree(degree)
    return (degree + 1) ** 2


def check_sh_degree(degree: int) -> None:
    """ValueError unless degree is an int in 0..MAX_SH_DEGREE."""
    if isinstance(degree, bool) or not isinstance(degree, int) or not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"sh_degree must be an int in 0..{MAX_SH_DEGREE}, got {degree!r}")


def colors_shape(n: int, degree: int) -> tuple[int, ...]:
    """Shape of the "colors" parameter for n Gaussians: (n, 3) at degree 0, else (n, (degree+1)^2, 3)."""
    return (n, 3) if degree == 0 else (n, num_sh_bases(degree), 3)


def dc_to_colors(rgb_logits: torch.Tensor, degree: int) -> torch.Tensor:
    """Colour parameter rows [N, 3] or [N, K, 3] whose DC term is rgb_logits [N, 3] and higher orders 0."""
    if degree == 0:
        return rgb_logits.clone()
    out = torch.zeros(rgb_logits.shape[0], num_sh_bases(degree), 3, dtype=rgb_logits.dtype)
    out[:, 0] = rgb_logits
    return out


def _norm(l: int, m: int) -> float:
    """Normalisation sqrt((2l+1)/(4 pi) (l-|m|)!/(l+|m|)!), times sqrt(2) for m != 0 (real SH)."""
    k = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - abs(m)) / math.factorial(l + abs(m)))
    return k * math.sqrt(2.0) if m != 0 else k


def sh_basis(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """Real SH basis [N, (degree+1)^2] at unit directions dirs [N, 3] (index 0 is 1, see module doc).

    Each band is written as a polynomial in x, y, z (the associated Legendre functions times
    cos/sin(m phi) expanded), with the sign (-1)^m of the Condon-Shortley phase on odd m.
    """
    check_sh_degree(degree)
    x, y, z = dirs.unbind(-1)
    out = [torch.ones_like(x)]
    if degree >= 1:
        c = _norm(1, 1)  # equals _norm(1, 0) for l = 1
        out += [-c * y, c * z, -c * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        # P_2^2 = 3 sin^2, P_2^1 = -3 cos sin, P_2^0 = (3 cos^2 - 1) / 2; sin^m cos/sin(m phi)
        # expands to x, y (m = 1) and x^2 - y^2, 2xy (m = 2); |dir| = 1 turns 1 into xx + yy + zz.
        out += [6 * _norm(2, 2) * x * y, -3 * _norm(2, 1) * y * z, 0.5 * _norm(2, 0) * (2 * zz - xx - yy),
                -3 * _norm(2, 1) * x * z, 3 * _norm(2, 2) * (xx - yy)]
    if degree >= 3:
        # P_3^3 = -15 sin^3, P_3^2 = 15 cos sin^2, P_3^1 = -1.5 (5 cos^2 - 1) sin, P_3^0 = (5 cos^3 - 3 cos) / 2;
        # sin^3 cos/sin(3 phi) = x (x^2 - 3y^2) / y (3x^2 - y^2).
        out += [-15 * _norm(3, 3) * y * (3 * xx - yy),
                30 * _norm(3, 2) * x * y * z,
                -1.5 * _norm(3, 1) * y * (4 * zz - xx - yy),
                0.5 * _norm(3, 0) * z * (2 * zz - 3 * xx - 3 * yy),
                -1.5 * _norm(3, 1) * x * (4 * zz - xx - yy),
                15 * _norm(3, 2) * z * (xx - yy),
                -15 * _norm(3, 3) * x * (xx - 3 * yy)]
    return torch.stack(out, -1)


def sh_to_rgb(colors: torch.Tensor, means: torch.Tensor, cam_centre: torch.Tensor, degree: int) -> torch.Tensor:
    """Activated colours [N, 3] in 0..1 seen from cam_centre [3].

    colors [N, 3] (degree 0) or [N, (degree+1)^2, 3]; means [N, 3]. Differentiable in colors and
    means. Degree 0 is sigmoid(colors) and ignores the camera.
    """
    check_sh_degree(degree)
    if degree == 0:
        if colors.ndim != 2 or colors.shape[-1] != 3:
            raise ValueError(f"degree-0 colors must be [N, 3], got {tuple(colors.shape)}")
        return torch.sigmoid(colors)
    K = num_sh_bases(degree)
    if colors.ndim != 3 or colors.shape[1:] != (K, 3):
        raise ValueError(f"degree-{degree} colors must be [N, {K}, 3], got {tuple(colors.shape)}")
    dirs = torch.nn.functional.normalize(means - cam_centre.to(means.dtype), dim=-1)  # [N, 3]
    Y = sh_basis(dirs, degree)  # [N, K]
    return torch.sigmoid(torch.einsum("nk,nkc->nc", Y, colors))


def camera_centre(viewmat: torch.Tensor) -> torch.Tensor:
    """World position [3] of the camera whose world -> camera matrix is viewmat [4, 4]: -Rᵀ t."""
    return -viewmat[:3, :3].T @ viewmat[:3, 3]
