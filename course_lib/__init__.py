"""course_lib: the one real implementation behind the stage-4 LLM engineering course.

Every notebook imports from here; exercises in ``exercises/`` are learner-sized versions of
single functions that live here in full.

Two layers (tests/test_imports.py enforces that the core never imports ``lab``):

ML core, one module per concept (their files map onto the lessons)
  config, cli            validated ModelConfig / TrainConfig; shared command-line helpers
  model, kv_cache        DIYModel; dynamic / static / int8 / paged KV caches behind one Cache ABC
  data, dataloading      Tokenizer protocol and corpus; streaming dataset with a Stateful position
  schedule, train, resume   warmup schedules; Trainer and ``python -m course_lib.train``; the resume policy
  monitor, callbacks     step logging (console, JSONL, TensorBoard); the Callback interface
  checkpoint, fsio, faults   atomic checkpoints (single-file and DCP-sharded), fsync'd writes, fault injection
  distributed, launch, fsdp, memory   process groups and torchrun; FSDP2; memory estimate vs measurement
  export, quantize, absmax   inference artefacts and HF export; int8 / int4 / GPTQ
  generate, engine, serve, pretrained   decoding; continuous batching; OpenAI-compatible server; reference model
  fused_decode          a decode step with stacked q/k/v and gate/up weights, float or int8/int4 (cache="fused")
  scheduler, block_manager, model_runner   the engine's parts (nano-vllm's split): admission, chunked prefill
                         and preemption; block tables, refcounts, prefix cache; ragged paged forwards

Course machinery: ``course_lib.lab`` (grading, hints, quizzes, lesson measurements, plotting, ...)
"""

__version__ = "0.1.0"
