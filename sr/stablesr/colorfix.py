"""Wavelet colour fix (StableSR's `wavelet_reconstruction`): keep the SR image's high frequencies and
take the low frequencies (colour, shading) from the LR input, so diffusion cannot shift colours.

Five levels of an a-trous ("with holes") decomposition: level k blurs with the 3x3 binomial kernel
dilated by 2^k, replicate padding; high = sum of the level residuals, low = the last blur.
"""
import torch
import torch.nn.functional as F

_KERNEL = ((0.0625, 0.125, 0.0625), (0.125, 0.25, 0.125), (0.0625, 0.125, 0.0625))


def wavelet_blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    c = image.shape[1]
    kernel = torch.tensor(_KERNEL, dtype=image.dtype, device=image.device)[None, None].repeat(c, 1, 1, 1)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=c, dilation=radius)


def wavelet_decomposition(image: torch.Tensor, levels: int = 5):
    """(high, low) with image == high + low."""
    high = torch.zeros_like(image)
    low = image
    for k in range(levels):
        blurred = wavelet_blur(low, 2 ** k)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(content: torch.Tensor, style: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """content's high frequencies + style's low frequencies; both [B, C, H, W], same size, any range."""
    if content.shape != style.shape:
        raise ValueError(f"colour fix needs images of one size, got {list(content.shape)} and {list(style.shape)}")
    return wavelet_decomposition(content, levels)[0] + wavelet_decomposition(style, levels)[1]
