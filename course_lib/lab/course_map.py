"""The course map: which notebook teaches which study-plan item, and its exercises.

One source of truth used by 00-setup, the README and `course_lib.lab.grading.progress()`.
`exercises` lists exercise stems (files `exercises/<stem>.py`); planned lessons may list none
yet. Lesson ids ("4.0.1") map to exercise files named `ex401_*.py`.
"""

from __future__ import annotations

COURSE_MAP: list[dict] = [
    {
        "id": "00",
        "notebook": "00-setup.ipynb",
        "title_zh": "环境检查与课程导览",
        "study_plan_item": "准备：环境、课程地图、练习与自检",
        "exercises": ["ex00_rmsnorm"],
        "tests": [
            "tests/unit/test_model.py",
            "tests/unit/test_config.py",
            "tests/unit/test_data.py",
            "tests/unit/test_train.py",
        ],
    },
    {
        "id": "4.0.1",
        "notebook": "4.0.1-checkpoint-resume.ipynb",
        "title_zh": "Checkpoint 与恢复训练",
        "study_plan_item": "4.0 第 1 项 Checkpoint 与恢复训练",
        "exercises": ["ex401_checkpoint"],
        "tests": ["tests/reliability/test_kill_resume.py", "tests/reliability/test_bad_checkpoints.py"],
    },
    {
        "id": "4.0.2",
        "notebook": "4.0.2-lr-warmup.ipynb",
        "title_zh": "学习率与 warmup",
        "study_plan_item": "4.0 第 2 项 学习率与 warmup",
        "exercises": ["ex402_lr_schedule"],
        "tests": ["tests/unit/test_schedule.py"],
    },
    {
        "id": "4.0.3",
        "notebook": "4.0.3-grad-clipping.ipynb",
        "title_zh": "梯度裁剪",
        "study_plan_item": "4.0 第 3 项 梯度裁剪 (Gradient Clipping)",
        "exercises": ["ex403_clip_grad_norm"],
        "tests": ["tests/reliability/test_nan_guard.py"],
    },
    {
        "id": "4.0.4",
        "notebook": "4.0.4-logging-monitoring.ipynb",
        "title_zh": "Loss 与日志监控",
        "study_plan_item": "4.0 第 4 项 Loss 与日志监控",
        "exercises": ["ex404_nan_guard"],
        "tests": ["tests/reliability/test_monitoring.py", "tests/browser/test_tensorboard.py"],
    },
    {
        "id": "4.0.5",
        "notebook": "4.0.5-memory-estimation.ipynb",
        "title_zh": "数据量与显存估算",
        "study_plan_item": "4.0 第 5 项 数据量与显存估算",
        "exercises": ["ex405_memory_estimate"],
        "tests": ["tests/unit/test_memory.py"],
    },
    {
        "id": "4.0.6",
        "notebook": "4.0.6-profiling-roofline.ipynb",
        "title_zh": "时间花在哪里：profiling 与 roofline",
        "study_plan_item": "阶段四的测量基础：profiler、基准测试方法、roofline、MFU 与 MBU",
        "exercises": ["ex406_roofline_counts"],
        "tests": ["tests/unit/test_roofline.py", "tests/reliability/test_mfu_log.py"],
    },
    {
        "id": "4.1.1",
        "notebook": "4.1.1-checkpoint-management.ipynb",
        "title_zh": "Checkpoint 管理",
        "study_plan_item": "4.1 第 1 项 Checkpoint 管理（巩固 4.0）",
        "exercises": ["ex411_keep_last_k", "ex411_train_script"],
        "tests": ["tests/unit/test_train.py"],
    },
    {
        "id": "4.1.2",
        "notebook": "4.1.2-ddp-torchrun.ipynb",
        "title_zh": "分布式训练 DDP 与 torchrun",
        "study_plan_item": "4.1 第 2 项 分布式训练（DDP）",
        "exercises": ["ex412_ddp_setup", "ex412_ddp_by_hand"],
        "tests": ["tests/reliability/test_ddp_torchrun.py"],
    },
    {
        "id": "4.1.3",
        "notebook": "4.1.3-data-loading.ipynb",
        "title_zh": "数据加载",
        "study_plan_item": "4.1 第 4 项 数据加载（第 3 项 日志与监控见 4.0.4）",
        "exercises": ["ex413_sharded_stream"],
        "tests": ["tests/unit/test_dataloading.py", "tests/unit/test_data.py"],
    },
    {
        "id": "4.1.4",
        "notebook": "4.1.4-grad-accumulation.ipynb",
        "title_zh": "梯度累积",
        "study_plan_item": "4.1 第 5 项 梯度累积",
        "exercises": ["ex414_grad_accumulation"],
        "tests": ["tests/unit/test_accumulation.py"],
    },
    {
        "id": "4.1.5",
        "notebook": "4.1.5-mixed-precision.ipynb",
        "title_zh": "混合精度",
        "study_plan_item": "4.1 第 6 项 混合精度",
        "exercises": ["ex415_amp_step"],
        "tests": ["tests/unit/test_amp.py"],
    },
    {
        "id": "4.1.6",
        "notebook": "4.1.6-fsdp-sharded-checkpoints.ipynb",
        "title_zh": "FSDP2、分片检查点与换卡数恢复",
        "study_plan_item": "阶段四之后「若需进一步扩展，可再学习更多分布式策略」：FSDP2 与分片检查点",
        "exercises": ["ex416_per_rank_memory"],
        "tests": [
            "tests/unit/test_fsdp_memory.py",
            "tests/unit/test_fsdp.py",
            "tests/reliability/test_fsdp_torchrun.py",
        ],
    },
    {
        "id": "4.1.7",
        "notebook": "4.1.7-tokenizer-sft.ipynb",
        "title_zh": "BPE 分词器与 SFT：从训练到聊天",
        "study_plan_item": "阶段三 → 阶段四：自己的分词器 (BPE) 与 SFT 数据接上阶段四的训练、恢复与部署",
        "exercises": ["ex417_sft_collator"],
        "tests": ["tests/unit/test_sft.py", "tests/unit/test_tokenizer.py", "tests/reliability/test_sft_kill.py"],
    },
    {
        "id": "4.2.1",
        "notebook": "4.2.1-inference-artifacts.ipynb",
        "title_zh": "推理产物导出",
        "study_plan_item": "4.2 第 1 项 模型保存与加载（推理产物 safetensors + config）",
        "exercises": ["ex421_inference_artifact"],
        "tests": ["tests/unit/test_export.py", "tests/unit/test_hf_export.py"],
    },
    {
        "id": "4.2.2",
        "notebook": "4.2.2-quantization.ipynb",
        "title_zh": "量化",
        "study_plan_item": "4.2 第 2 项 量化 (Quantization)",
        "exercises": ["ex422_int8_quant"],
        "tests": ["tests/unit/test_quantize.py"],
    },
    {
        "id": "4.2.3",
        "notebook": "4.2.3-kv-cache.ipynb",
        "title_zh": "KV Cache",
        "study_plan_item": "4.2 第 3 项 KV Cache 优化",
        "exercises": ["ex423_kv_attention_step", "ex423_kv_block"],
        "tests": ["tests/unit/test_kv_cache.py"],
    },
    {
        "id": "4.2.4",
        "notebook": "4.2.4-batched-inference.ipynb",
        "title_zh": "批量推理",
        "study_plan_item": "4.2 第 4 项 Batch 推理",
        "exercises": ["ex424_left_pad", "ex424_batched_generate"],
        "tests": ["tests/unit/test_batched_generation.py"],
    },
    {
        "id": "4.2.5",
        "notebook": "4.2.5-continuous-batching.ipynb",
        "title_zh": "连续批处理与推理服务",
        "study_plan_item": "4.2 第 4 项 Batch 推理（dynamic batching）与简单部署",
        "exercises": ["ex425_scheduler"],
        "tests": ["tests/unit/test_engine.py", "tests/unit/test_serve.py"],
    },
    {
        "id": "4.2.6",
        "notebook": "4.2.6-prefix-caching-chunked-prefill.ipynb",
        "title_zh": "前缀缓存与分块预填充",
        "study_plan_item": "4.2 第 3 项「进一步优化思路」：前缀缓存 (prefix caching) 与分块预填充 (chunked prefill)",
        "exercises": ["ex426_prefix_cache"],
        "tests": ["tests/unit/test_prefix_chunked.py"],
    },
    {
        "id": "99",
        "notebook": "99-capstone.ipynb",
        "title_zh": "综合项目：端到端跑通阶段四",
        "study_plan_item": "阶段四汇总：结果清单逐条由真实检查打勾",
        "exercises": [],
        "tests": ["tests/unit/test_runner.py", "tests/test_progress.py", "tests/browser/test_jupyterlab.py"],
    },
]


def exercise_prefix(lesson_id: str) -> str:
    """ "4.0.1" -> "ex401", "00" -> "ex00"."""
    return "ex" + lesson_id.replace(".", "")


def markdown_table(root=None, with_tests: bool = True) -> str:
    """The course map as a Markdown table (notebook, study-plan item, exercises).

    With `root` (the repository path), notebooks that do not exist yet are marked 计划中.
    `with_tests=False` leaves out the tests column (00-setup: the table fits the notebook's width).
    """
    from pathlib import Path

    rows = ["| 编号 | Notebook | 内容 | 学习计划条目 | 练习 | 测试 (tests) |", "|---|---|---|---|---|---|"]
    for e in COURSE_MAP:
        nb = f"`{e['notebook']}`"
        if root is not None and not (Path(root) / "notebooks" / e["notebook"]).exists():
            nb += "（计划中）"
        ex = ", ".join(f"`{x}`" for x in e["exercises"]) or "—"
        graders = [f"tests/exercises/test_{x}.py" for x in e["exercises"]]
        tests = ", ".join(f"`{t}`" for t in graders + e.get("tests", [])) or "—"
        rows.append(f"| {e['id']} | {nb} | {e['title_zh']} | {e['study_plan_item']} | {ex} | {tests} |")
    if not with_tests:
        rows = ["|".join(r.split("|")[:-2]) + "|" for r in rows]
    return "\n".join(rows)
