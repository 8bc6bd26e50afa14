"""loopdesk trainer: rewards from human feedback, LoRA PPO, the evaluation gate, releasing adapters."""
