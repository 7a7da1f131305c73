"""embedkit plugin: convolutional autoencoders and VAEs trained by embedkit (``ae:``/``vae:``)."""
