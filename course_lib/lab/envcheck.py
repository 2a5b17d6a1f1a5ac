"""Environment check: [OK] / [FAIL] per package and per capability.

from course_lib.lab.envcheck import run_checks
run_checks()            # prints the report, returns True when nothing required failed

python -m course_lib.lab.envcheck
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from dataclasses import dataclass

from ..config import quick_mode  # the one parser of COURSE_QUICK (config imports no third-party package)
from .threads import choose_threads, load_average  # no third-party import (works without torch)

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
    ("tokenizers", "tokenizers", True),  # the BPE tokenizer (course_lib.tokenizer, lesson 4.1.7)
    ("transformers", "transformers", False),  # only the HF-parity test needs it
]


@dataclass
class Check:
    name: str
    status: str  # OK / FAIL / SKIP / INFO / WARN (works, but something the learner should fix)
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
    choice = choose_threads(load=load_average())
    out.append(
        Check(
            "CPU threads",
            "OK",
            f"torch.get_num_threads() = {torch.get_num_threads()}, "
            f"os.cpu_count() = {os.cpu_count()}；课程的选择：{choice.line()}",
        )
    )
    if torch.cuda.is_available():
        out.append(Check("CUDA", "OK", f"可用: {torch.cuda.device_count()} 块 GPU，{torch.cuda.get_device_name(0)}"))
    else:
        out.append(Check("CUDA", "INFO", "不可用 (CPU only)：课程在 CPU 上也能完整运行"))
    import torch.distributed as dist

    gloo = dist.is_available() and dist.is_gloo_available()
    out.append(
        Check("gloo backend (CPU DDP)", "OK" if gloo else "FAIL", "可用" if gloo else "不可用：4.1.2 的 DDP 实验需要它")
    )
    if torch.cuda.is_available():
        nccl = dist.is_available() and dist.is_nccl_available()
        out.append(Check("nccl backend (GPU DDP)", "OK" if nccl else "FAIL", "可用" if nccl else "不可用"))
    try:
        a = torch.randn(8, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            c = a @ a
        ok = c.dtype == torch.bfloat16 and torch.isfinite(c).all().item()
        out.append(Check("bf16 autocast on CPU", "OK" if ok else "FAIL", f"8x8 matmul 输出 dtype = {c.dtype}"))
    except Exception as e:
        out.append(Check("bf16 autocast on CPU", "FAIL", f"{type(e).__name__}: {e}"))
    out.append(
        Check("quick mode (COURSE_QUICK)", "INFO", "开启：规模缩小，用于测试" if quick_mode() else "关闭：完整规模")
    )
    return out


CJK_INSTALL = {
    "Debian / Ubuntu": "sudo apt-get install fonts-noto-cjk",
    "Fedora": "sudo dnf install google-noto-sans-cjk-fonts",
    "Arch": "sudo pacman -S noto-fonts-cjk",
    "openSUSE": "sudo zypper install noto-sans-cjk-fonts",
}


def check_cjk_font(platform: str | None = None, fc_list=None) -> Check:
    """Chinese text needs a CJK font on the machine the browser runs on (else every character is a box).

    Linux: `fc-list :lang=zh` lists the installed fonts that cover Chinese. macOS and Windows
    ship CJK fonts. `fc_list` (a callable returning fc-list's output, or None when fc-list is
    missing) is for tests.
    """
    platform = sys.platform if platform is None else platform
    name = "中文字体 (CJK font)"
    if not platform.startswith("linux"):
        return Check(name, "OK", "macOS / Windows 自带中文字体")
    if fc_list is None:

        def fc_list():
            try:
                r = subprocess.run(
                    ["fc-list", ":lang=zh", "family"], capture_output=True, text=True, timeout=20, check=False
                )
            except (OSError, subprocess.TimeoutExpired):
                return None
            return r.stdout if r.returncode == 0 else None

    out = fc_list()
    how = "；".join(f"{k}: {v}" for k, v in CJK_INSTALL.items())
    if out is None:
        return Check(
            name, "WARN", f"找不到 fc-list，无法确认有没有中文字体；如果浏览器里的中文显示成方框，请安装：{how}"
        )
    fonts = sorted({f.split(",")[0].strip() for f in out.splitlines() if f.strip()})
    if not fonts:
        return Check(name, "WARN", f"没有找到中文字体：浏览器里的中文会显示成方框。请安装（然后重启浏览器）：{how}")
    return Check(name, "OK", ", ".join(fonts[:3]) + (" ..." if len(fonts) > 3 else ""))


def run_checks(verbose: bool = True) -> bool:
    """Print every check; return True when no check is FAIL."""
    checks = check_packages() + check_capabilities() + [check_cjk_font()]
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
        warns = [c.name for c in checks if c.status == "WARN"]
        if warns:
            print(f"注意 [WARN]：{', '.join(warns)}——课程能运行，但请按上面的提示处理")
    return ok


if __name__ == "__main__":
    sys.exit(0 if run_checks() else 1)
