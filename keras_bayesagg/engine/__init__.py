"""The gradient engine: plain TensorFlow pieces of one train step, no `keras.Model` inside.

- `gradients`: per-unit losses, exact per-sample task gradients of linear heads, per-unit
  parameter gradients, and `route`, which turns an aggregation into (gradient, variable) pairs.
- `faults`: in-graph fault codes, the fault record, and `apply_if`, which applies an update only
  when the step is sound (on one device and under tf.distribute).
"""
