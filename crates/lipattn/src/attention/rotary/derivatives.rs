//! JVP and VJP of X -> output (docs/rotary.md#derivatives).
