"""Environment check: [OK] / [FAIL] per package and per capability.

    from course_lib.envcheck import run_checks
    run_checks()            # prints the report, returns True when nothing required failed

    python -m course_lib.envcheck
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

from .config import quick_mode  # the one parser of COURSE_QUICK (config imports no third-party package)

# (import name, distribution name shown to the learner, required?)
PACKAGES = [
    ("torch", "torch", True),
    ("numpy", "numpy", True),
    ("matplotlib", "matplotlib", True),
    ("ipywidgets", "ipywidgets", True),
    ("tensorboard", "tensorboard", True),
    ("safetensors", "safetensors", True),
    ("tqdm", "tqdm", True),
    ("nbval", "nbval", True),
    ("jupyterlab", "jupyterlab", True),
    ("psutil", "psutil", True),
    ("transformers", "transformers", False),  # only the HF-parity test needs it
]


@dataclass
class Check:
    name: str
    status: str   # OK / FAIL / SKIP / INFO
    detail: str = ""

    def line(self) -> str:
        return f"[{self.status}] {self.name}" + (f": {self.detail}" if self.detail else "")


def _version(mod) -> str:
    v = getattr(mod, "__version__", None)
    if v:
        return str(v)
    try:
        from importlib.metadata import version

        return version(mod.__name__)
    except Exception:
        return "?"


def check_packages() -> list[Check]:
    out = []
    for mod_name, dist, required in PACKAGES:
        try:
            mod = importlib.import_module(mod_name)
            out.append(Check(dist, "OK", _version(mod)))
        except Exception as e:  # ImportError, or a broken install raising something else
            if required:
                out.append(Check(dist, "FAIL", f"无法导入 ({type(e).__name__}: {e})；请运行 make install"))
            else:
                out.append(Check(dist, "SKIP", "可选 (optional)，未安装；只有 HF 对齐测试需要它"))
    return out


def check_capabilities() -> list[Check]:
    out = [Check("python", "OK", sys.version.split()[0])]
    try:
        import torch
    except Exception as e:
        return out + [Check("torch", "FAIL", f"无法导入: {e}")]
    out.append(Check("torch version", "OK", torch.__version__))
    out.append(Check("CPU threads", "OK", f"torch.get_num_threads() = {torch.get_num_threads()}, "
                                          f"os.cpu_count() = {os.cpu_count()}"))
    if torch.cuda.is_available():
        out.append(Check("CUDA", "OK", f"可用: {torch.cuda.device_count()} 块 GPU，"
                                       f"{torch.cuda.get_device_name(0)}"))
    else:
        out.append(Check("CUDA", "INFO", "不可用 (CPU only)：课程在 CPU 上也能完整运行"))
    import torch.distributed as dist

    gloo = dist.is_available() and dist.is_gloo_available()
    out.append(Check("gloo backend (CPU DDP)", "OK" if gloo else "FAIL",
                     "可用" if gloo else "不可用：4.1.2 的 DDP 实验需要它"))
    if torch.cuda.is_available():
        nccl = dist.is_available() and dist.is_nccl_available()
        out.append(Check("nccl backend (GPU DDP)", "OK" if nccl else "FAIL", "可用" if nccl else "不可用"))
    try:
        a = torch.randn(8, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            c = a @ a
        ok = c.dtype == torch.bfloat16 and torch.isfinite(c).all().item()
        out.append(Check("bf16 autocast on CPU", "OK" if ok else "FAIL",
                         f"8x8 matmul 输出 dtype = {c.dtype}"))
    except Exception as e:
        out.append(Check("bf16 autocast on CPU", "FAIL", f"{type(e).__name__}: {e}"))
    out.append(Check("quick mode (COURSE_QUICK)", "INFO",
                     "开启：规模缩小，用于测试" if quick_mode() else "关闭：完整规模"))
    return out


def run_checks(verbose: bool = True) -> bool:
    """Print every check; return True when no check is FAIL."""
    checks = check_packages() + check_capabilities()
    if verbose:
        print("== 依赖包 (packages)")
        n_pkg = len(PACKAGES)
        for c in checks[:n_pkg]:
            print(c.line())
        print("== 运行能力 (capabilities)")
        for c in checks[n_pkg:]:
            print(c.line())
    ok = not any(c.status == "FAIL" for c in checks)
    if verbose:
        print("\n环境检查通过 (all required checks OK)" if ok else "\n有检查未通过：见上面的 [FAIL]")
    return ok


if __name__ == "__main__":
    sys.exit(0 if run_checks() else 1)
