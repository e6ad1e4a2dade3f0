"""Memory plan: compile the DPKD train step for a config on abstract shapes over a
mesh of N devices (no weights allocated) and report per-device memory.

  python -m dpkd_jax.tools.plan --config=configs/opt13b_to_1p3b.py --topology=v5e:2x4,v5e:4x8 \
      --mesh=data:1,fsdp:-1,tensor:8
  python -m dpkd_jax.tools.plan --config=configs/opt13b_to_1p3b.py --devices=8,32,64

``--topology`` compiles for a real TPU slice with XLA's TPU compiler on this host
(``pip install libtpu``; no TPU needed): the figures are the TPU build's. ``--devices``
compiles for simulated CPU devices instead: parameters and optimizer state are still
exact, but XLA:CPU's temporaries are not a GPU/TPU build's: it upcasts bf16 matmul
operands to float32 and keeps such copies of the teacher's weights (about 11 GiB
extra for the bf16 GPT-2 XL teacher).
Model sizes come from ``teacher.path``/``student.path`` when those folders exist,
otherwise from the public configs of the paper's models (:data:`KNOWN`) by folder name.
"""

from __future__ import annotations

import os
import sys


def main(argv=None):
    # The simulated devices must exist before JAX starts: the planner (and JAX) are imported after this.
    counts = [a for a in (argv or sys.argv) if a.startswith("--devices=")]
    n_max = max(int(x) for x in (counts[-1].split("=", 1)[1] if counts else "8,32,64").split(","))
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n_max}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from absl import app, flags
    from ml_collections import config_flags
    from .. import memory, planner
    from ..runspec import RunSpec
    flags.DEFINE_string("devices", "8,32,64", "comma-separated simulated device counts")
    flags.DEFINE_string("mesh", "", "e.g. data:1,fsdp:-1,tensor:1 (default: the config's mesh)")
    flags.DEFINE_string("topology", "", "comma-separated TPU slices, e.g. v5e:2x4,v5e:4x8: compile with XLA's TPU "
                        "compiler on this host (pip install libtpu; no TPU needed) instead of simulated CPU devices")
    flags.DEFINE_integer("batch_per_replica", 0, "global batch = this x data-parallel size (0: the config's)")
    flags.DEFINE_string("fit_lengths", "", "comma-separated total lengths: print the largest batch per device and "
                        "the train.micro_batch=auto choice at each (the run's start-up check)")
    flags.DEFINE_float("memory_limit_gib", 0.0, "capacity per device for --fit_lengths (0: the chip's or host's)")
    config_flags.DEFINE_config_file("config", "configs/opt13b_to_1p3b.py", "experiment config")
    FLAGS = flags.FLAGS

    def run(_):
        spec = RunSpec.of(FLAGS.config)  # typed; the mesh is checked per target below, not for this host
        targets = ([planner.topology_devices(t) for t in FLAGS.topology.split(",")] if FLAGS.topology
                   else [int(x) for x in FLAGS.devices.split(",")])
        mesh = planner.parse_mesh(FLAGS.mesh) if FLAGS.mesh else spec.mesh.sizes()
        if FLAGS.fit_lengths:
            lengths = [int(x) for x in FLAGS.fit_lengths.split(",")]
            for devices in targets:
                print(memory.fit_table(memory.fit_rows(spec, mesh, devices, lengths, FLAGS.memory_limit_gib)))
            return
        print(planner.table(planner.plan_rows(spec, mesh, targets, FLAGS.batch_per_replica)))
    app.run(run, argv)


if __name__ == "__main__":
    main()
