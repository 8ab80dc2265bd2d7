"""Text generation behind one interface (`Generator`), several engines.

A prompt is either a list of chat messages (rendered with the tokenizer's chat template, with the
generation prompt added) or a plain string (raw text, fed as is: completion mode).

- `types`: `Generator`, `SamplingParams`, `Completion` and the callbacks.
- `sampling`: per-row seeds and the inverse-CDF sampler every engine shares.
- `hf`: the Hugging Face backend (`model.generate`), the reference semantics.
- `engine` (+ `packing`): the continuous-batching engine for CPUs.
- `vllm`: vLLM on GPUs. `replicas`: data-parallel copies in child processes.
- `local`: a generator around a model loaded here; `factory`: `open_generator` from a model spec.

Sampling is reproducible per (seed, prompt text, sample index), whatever the batch size or the
other prompts in the batch: every row owns a seeded random stream and draws its next token by
inverse-CDF sampling from its own distribution (one uniform number per row per step).

To add a backend: a class with `generate(prompts, params, progress, stop_when)` in a module of its
own here, its name in `local.BACKENDS`, and its construction in `local.make_generator` (a model
loaded in this process) or `factory.open_generator` (a model served elsewhere).

Usage:
    from selftune.generation.factory import open_generator
    from selftune.generation.types import SamplingParams
    with open_generator("builtin:smollm2-135m-instruct") as gen:
        [[answer]] = gen.generate([[{"role": "user", "content": "Hi"}]], SamplingParams())
    answer.text, answer.finish_reason          # 'Hello! ...', 'stop'
"""
