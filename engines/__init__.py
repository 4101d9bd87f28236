"""Training (`trainer`, `recipes`, `metrics`) and inference engines: `devices` (device and precision
policy), `schema` (engine.json), `build` (compile + parity + threshold), `runtime` (Engine, load_engine),
`registry` (find, list, promote), one backend per file in `backends/`."""
