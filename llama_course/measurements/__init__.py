"""The chapters' measurements of the model and the trainer: what a design choice costs, measured.

- `kv_memory`: bytes of the KV cache by number of KV heads (chapter 5; exercise 5's check);
- `profiling`: bytes kept for the backward pass and interleaved timings (chapters 5 and 6, the ablations' step
  times of chapters 2 to 5, `benchmarks/`);
- `parameter_budget`: where a Llama's parameters go (chapter 7);
- `story_samples`: the grammar score of sampled stories (chapters 7 and 8, the shipped base model's card);
- `sharding_memory`: per-rank bytes under DDP and FSDP2, run under torchrun (chapter 9; exercise 9's check);
- `activation_memory`: activation bytes under tensor and sequence parallelism, run under torchrun (chapter 9).
"""
