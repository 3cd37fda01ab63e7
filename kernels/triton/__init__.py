"""The Triton path: matmuls over experts with ragged rows (backend="triton").

    modes.py    the kernels' compile-time modes, named (EPI_*, WQ_*)
    configs.py  the launch configurations and the policy that picks one (pinned table, autotuner
                pruning, split-K)
    jit.py      the jit kernels: rows_kernel, reduce_splits_kernel, dw_kernel
    launch.py   their launchers and the named steps (grouped_rows, up_activation, down_scatter,
                activation_backward, dx_scatter, expert_xt_y) that kernels/ops.py registers as operators

Nothing here loads until the Triton backend is first used.
"""
