"""Next-sentence continuation (Hu et al. 2023, section 4.1): sample one sentence that continues a prompt."""
