"""StableSR-Turbo (Wang et al. 2024, the SR model of the 3DSR paper) ported onto diffusers blocks.

    config.py       architecture numbers (REAL = released model, TINY = the test oracle's)
    unet.py         UNet2DConditionModel with SFT on every ResNet block + the time-aware structure encoder
    autoencoder.py  SD VAE (AutoencoderKL) and the CFW autoencoder (fusion layers, weight w)
    schedule.py     linear schedule, 4-step respacing, posterior coefficients
    tiler.py        overlapping latent tiles with the original's (asymmetric) Gaussian blend
    colorfix.py     wavelet colour fix
    convert.py      strict loading of stablesr_turbo.ckpt / vqgan_cfw_00011.ckpt (.ckpt or .safetensors)
    model.py        StableSRModel: the networks together; sampling.py: the original samplers
    adapter.py      StableSRTurbo: the DiffusionSR adapter (`--sr_model stablesr-turbo --sr_weights DIR`)
Nothing is imported here: diffusers is a heavy import.
"""
