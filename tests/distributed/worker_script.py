"""One worker of a MultiWorkerMirroredStrategy run: argv = worker index, comma-separated ports, output folder.

Trains BayesAgg (steps_per_execution=2) and linear scalarization; saves each run's weights to
<out>/<run>-<index>.npz, and the chief (worker 0) saves the BayesAgg model as <out>/bayesagg.keras with
its predictions on the probe inputs in <out>/bayesagg-predictions.npz.
"""

import json
import os
import sys

index, ports, out = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
os.environ["TF_CONFIG"] = json.dumps(
    {"cluster": {"worker": [f"localhost:{port}" for port in ports]}, "task": {"type": "worker", "index": index}}
)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bayesagg as kb  # noqa: E402
from tests.distributed import common  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()
assert strategy.num_replicas_in_sync == len(ports), strategy.num_replicas_in_sync
runs = {"bayesagg": (common.bayesagg, 2), "linear": (kb.aggregators.LinearScalarization, 1)}
for run, (make, steps_per_execution) in runs.items():
    model = common.trained(strategy, make, steps_per_execution=steps_per_execution)
    np.savez(os.path.join(out, f"{run}-{index}.npz"), *common.weights(model))
    if run == "bayesagg":
        predictions = model.predict(common.probe_inputs(), verbose=0)  # every worker: it runs collectives
        if strategy.cluster_resolver.task_id == 0:  # the chief writes
            model.save(os.path.join(out, "bayesagg.keras"))
            np.savez(os.path.join(out, "bayesagg-predictions.npz"), **predictions)
print("OK", index, flush=True)
