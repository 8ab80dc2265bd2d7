"""selftune: make a language model better at following instructions by training it on its own,
checked outputs (rejection-sampled LoRA SFT, then DPO on the merged SFT model)."""

__version__ = "0.1.0"
