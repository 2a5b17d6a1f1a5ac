"""练习 ex412（进阶，选做）：手写 DDP 的梯度同步 (gradient all-reduce by hand)。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.1.2")` 检查；卡住时
`from course_lib.lab.hints import hint; hint("ex412_ddp_by_hand")`，每调用一次多给一层提示。
评分器会真的启动 2 个进程（gloo 后端，CPU），把你的结果和 `DistributedDataParallel` 比较。
"""

import torch
import torch.distributed as dist  # noqa: F401  (the process group is already initialised)


def average_gradients(model: torch.nn.Module) -> None:
    """在每个进程的 `loss.backward()` 之后、`optimizer.step()` 之前调用：把梯度变成所有进程的平均。

    约定 (contract)：
    - 进程组 (process group) 已经初始化好，各进程的 `model` 初始参数相同、数据不同；
    - 调用之后，每个 `p.grad` 在所有进程上都相同，等于各进程梯度的 **平均值**（不是和）；
      `p.grad is None` 的参数跳过；不返回任何东西；
    - 于是每个进程各自 `optimizer.step()` 之后参数仍然一致，结果与 `DistributedDataParallel`
      相同（误差 1e-6 内）。

    例子：2 个进程，某个参数的梯度在 rank 0 是 [1., 2.]，在 rank 1 是 [3., 6.] →
    调用后两边都是 [2., 4.]。
    """
    raise NotImplementedError("请实现 average_gradients")


def install_grad_hooks(model: torch.nn.Module) -> list:
    """与上面相同的平均，但不需要在 backward 之后手动调用：在 backward **进行中**、每个参数的梯度
    一算完就同步它（这样通信可以和后面层的反向计算重叠）。

    约定 (contract)：
    - 对每个 `requires_grad` 的参数注册一个钩子 (hook)，返回这些钩子的句柄 (handle) 列表
      （调用方可以 `h.remove()` 取消）；
    - 之后每次 `loss.backward()` 结束时，所有 `p.grad` 已是各进程的平均值，无需再调用别的函数。

    例子：`handles = install_grad_hooks(model)`；`loss.backward()`；`opt.step()` →
    与 DDP 一步的结果相同；`len(handles)` 等于可训练参数的个数。
    """
    raise NotImplementedError("请实现 install_grad_hooks")
