"""The tools that hold the Triton kernels' launch configurations to account and choose them:

    python -m kernels.tuning.check_compile --quick    compile every shipped variant for sm_90 without a
                                                      GPU and read the machine code back (spills, HGMMA,
                                                      TMA, asynchronous copies); --arch 80 for an A100
    python -m kernels.tuning.pin_configs              choose kernels/pinned_configs.py from the compile
                                                      reports (bench/results/compile-sm*/)
    python -m kernels.tuning.tune_configs             on a GPU: time the clean candidates, write the
                                                      table the measurements choose

variants.py names the kernel modes they share. They import only torch, triton and the kernels.
"""
