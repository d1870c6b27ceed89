"""Training: the two-stage trainer (`trainer`), its configuration (`config`), the run directory
(`rundir`), stage 2 and the final evaluation (`linear_head`, `final`, `probe`, `selection`), data
for the trainer (`data`, `eeg_windows`) and embedding maps (`viz`). Serving never imports this."""
