"""What `PowerFlowTrainer` uses beyond the method itself: the GRPO option table, warnings and guards, logging,
the frozen base model and the live distance-to-target estimate."""
