#!/usr/bin/env bash
# Reproduces the logger pictures in docs/figures/ from a real demo run:
#
#   tensorboard_custom_scalars.png  TensorBoard "Custom Scalars" tab: the layout EntropyMonitor writes
#                                   (ELBO vs entropy sum, relative gap, per-latent encoder entropy with the
#                                   collapsed latents in the colour of run lines/collapsed, the active ones in
#                                   that of lines/active, active-latent count)
#   tensorboard_scalars.png         TensorBoard "Scalars" tab filtered to the ELBO-vs-sum, rel_gap and
#                                   active-latent tags
#   tensorboard_latents.png         TensorBoard "Scalars" tab filtered to train/latent_entropy/: one chart per
#                                   latent, whose line changes colour where the latent changes state
#   tensorboard_text.png            TensorBoard "Text" tab: the per-latent table with the collapse flags
#   (all with smoothing 0, set in the URL: the counts and flags are steps, not ramps)
#   The TensorBoard run is the demo with H = 16 stopped after 60 epochs, while 7 latents are still collapsed.
#   wandb_offline_run.png           the same run logged with --logger wandb in offline mode; the history
#                                   records are read back from the run's .wandb file and plotted with
#                                   matplotlib (no W&B server or account is involved)
#
# Usage:  bash docs/make_screenshots.sh            (from anywhere; about 1-2 minutes on 2 CPU cores)
#
# Needs:  a Python environment with the package's dependencies, tensorboard, wandb, matplotlib and
#         Pillow (PY=..., default /work/venv/bin/python), and Chromium (Debian: apt-get install -y chromium).
#         Nothing leaves the machine: TensorBoard listens on 127.0.0.1 only, Chromium runs headless with
#         background networking off, W&B runs with WANDB_MODE=offline and is never logged in.
#
# Variables:  PY (python), CHROMIUM (browser binary), WORK (scratch folder, default /tmp/shots; its
#             run/ and wandb/ subfolders are deleted and recreated), PORT (TensorBoard port, default 6006),
#             TB_DEMO (demo arguments of the TensorBoard run, default "--latents 16 --epochs 60"),
#             WANDB (1: also the W&B figure, the default; 0: the TensorBoard screenshots only).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PY:-/work/venv/bin/python}
TENSORBOARD=${TENSORBOARD:-$(dirname "$PY")/tensorboard}
CHROMIUM=${CHROMIUM:-chromium}
WORK=${WORK:-/tmp/shots}
PORT=${PORT:-6006}
TB_DEMO=${TB_DEMO:---latents 16 --epochs 60}
WANDB=${WANDB:-1}
FIG="$REPO/docs/figures"
mkdir -p "$WORK" "$FIG"

command -v "$CHROMIUM" >/dev/null || { echo "no $CHROMIUM; install it: apt-get install -y chromium" >&2; exit 1; }

TB_PID=""
cleanup() {
    if [ -n "$TB_PID" ] && kill -0 "$TB_PID" 2>/dev/null; then
        kill "$TB_PID"; wait "$TB_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------------
# 1. Two real training runs of the demo (VAE-1, digits; about 15-20 s each). TensorBoard: H = 16, stopped
#    after 60 epochs, so that collapsed and active latents are both on the charts. W&B: the default demo
#    (H = 8, 150 epochs).
# ---------------------------------------------------------------------------------------------------
rm -rf "$WORK/run" "$WORK/wandb"
cd "$REPO"
echo "== demo run $TB_DEMO, TensorBoard + CSV logs -> $WORK/run"
# shellcheck disable=SC2086  # TB_DEMO is a list of arguments
PYTHONPATH="$REPO" "$PY" -m lightning_entropy_vae demo $TB_DEMO --out "$WORK/run" --no-progress-bar
if [ "$WANDB" = 1 ]; then
    echo "== demo run, W&B offline -> $WORK/wandb"
    WANDB_MODE=offline WANDB_SILENT=true PYTHONPATH="$REPO" \
        "$PY" -m lightning_entropy_vae demo --logger wandb --out "$WORK/wandb" --no-progress-bar
fi

# ---------------------------------------------------------------------------------------------------
# 2. TensorBoard on loopback, screenshots with headless Chromium.
# ---------------------------------------------------------------------------------------------------
echo "== tensorboard on 127.0.0.1:$PORT"
"$TENSORBOARD" --logdir "$WORK/run/tensorboard" --port "$PORT" --host 127.0.0.1 >"$WORK/tensorboard.log" 2>&1 &
TB_PID=$!

# Wait until TensorBoard serves the run's scalar tags (it loads event files in the background).
"$PY" - "$PORT" <<'EOF'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/data/plugin/scalars/tags"
for _ in range(120):
    try:
        if b"entropy/train/rel_gap" in urllib.request.urlopen(url, timeout=2).read():
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit("TensorBoard did not come up; see tensorboard.log")
EOF

# shot OUT.png URL [HEIGHT]: a 1400xHEIGHT (default 1000) screenshot of a TensorBoard page, fresh browser profile each time.
# --virtual-time-budget lets the single-page app fetch and draw its charts before the capture.
shot() {
    local out=$1 url=$2 height=${3:-1000} profile try
    for try in 1 2 3; do
        profile=$(mktemp -d)
        timeout 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
            --disable-background-networking --disable-component-update --disable-sync \
            --user-data-dir="$profile" --window-size=1400,"$height" --virtual-time-budget=15000 \
            --hide-scrollbars --screenshot="$out" "$url" >/dev/null 2>&1 || true
        rm -rf "$profile"
        # A page whose charts have not drawn yet is mostly blank and small.
        if [ -s "$out" ] && [ "$(stat -c %s "$out")" -gt 60000 ]; then return 0; fi
        echo "   retry $try: $url" >&2
    done
    echo "screenshot failed: $url" >&2; return 1
}

echo "== screenshots"
# (a) Custom Scalars tab: the layout EntropyMonitor writes to TensorBoard.
shot "$WORK/custom_scalars_full.png" "http://127.0.0.1:$PORT/#custom_scalars&_smoothingWeight=0" 1250
# (b) Scalars tab with a tag filter (regex elbo_vs_sum|rel_gap$|active) in the URL.
shot "$WORK/scalars_full.png" \
    "http://127.0.0.1:$PORT/#scalars&_smoothingWeight=0&tagFilter=elbo_vs_sum%7Crel_gap%24%7Cactive"
# (b') Scalars tab filtered to the per-latent entropies of the training epochs (runs lines/active, lines/collapsed).
shot "$WORK/latents_full.png" "http://127.0.0.1:$PORT/#scalars&_smoothingWeight=0&tagFilter=train%2Flatent_entropy%2F"
# (c) Text tab: the per-latent table.
shot "$WORK/text_full.png" "http://127.0.0.1:$PORT/#text"

# Crop away the empty right-hand part of the page (and, for (b), everything below the filtered tags).
"$PY" - "$WORK" "$FIG" <<'EOF'
import sys
from PIL import Image
work, fig = sys.argv[1:]
for src, dst, box in [
    ("custom_scalars_full.png", "tensorboard_custom_scalars.png", (0, 0, 1072, 1240)),
    ("scalars_full.png", "tensorboard_scalars.png", (0, 0, 1072, 990)),
    ("latents_full.png", "tensorboard_latents.png", (0, 0, 1072, 990)),
    ("text_full.png", "tensorboard_text.png", (0, 0, 1072, 720)),
]:
    im = Image.open(f"{work}/{src}").convert("RGB").crop(box)
    im.save(f"{fig}/{dst}", optimize=True)
    print(f"   {fig}/{dst}  {im.size[0]}x{im.size[1]}")
EOF

cleanup; TB_PID=""
if [ "$WANDB" != 1 ]; then
    ls -l "$FIG"/tensorboard_*.png
    exit 0
fi

# ---------------------------------------------------------------------------------------------------
# 3. W&B: no server here, so read the offline run's own transaction log back and plot it.
#    wandb 0.31 has no Python reader for .wandb files (the old wandb.sdk.internal.datastore.DataStore is
#    gone; the Go wandb-core reads them). The format is small: a 7-byte header (":W&B", 0xBEE1, version 0),
#    then LevelDB-log framing (32 KiB blocks; chunks of crc32 uint32, length uint16, type uint8:
#    1 full, 2 first, 3 middle, 4 last), each assembled record a wandb protobuf `Record`
#    (wandb.proto.wandb_internal_pb2). Every CRC is checked. History rows are Record.history items
#    with JSON-encoded values, the same rows `wandb sync` would upload.
# ---------------------------------------------------------------------------------------------------
echo "== W&B offline run -> $FIG/wandb_offline_run.png"
"$PY" - "$WORK" "$FIG" <<'EOF'
import glob, json, os, struct, sys, zlib
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from wandb.proto import wandb_internal_pb2 as pb

work, fig = sys.argv[1:]
(path,) = glob.glob(f"{work}/wandb/wandb/offline-run-*/run-*.wandb")

def records(path, block=32768, head=7):
    data = open(path, "rb").read()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    if (ident, magic, version) != (b":W&B", 0xBEE1, 0):
        sys.exit(f"{path}: not a W&B transaction log version 0")
    off, buf = 7, b""
    while off + head <= len(data):
        left = block - off % block
        if left < head:  # block trailer: padding
            off += left
            continue
        crc, n, kind = struct.unpack("<IHB", data[off:off + head])
        chunk = data[off + head:off + head + n]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            sys.exit(f"{path}: bad checksum at byte {off}")
        off += head + n
        if kind in (1, 2):
            buf = chunk
        elif kind in (3, 4):
            buf += chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec

rows, n_records = [], 0
for rec in records(path):
    n_records += 1
    if rec.HasField("history"):
        rows.append({(it.key or "/".join(it.nested_key)): json.loads(it.value_json) for it in rec.history.item})
print(f"   {path}: {n_records} records, {len(rows)} history rows")

def series(key):
    pts = [(r["trainer/global_step"], r[key]) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]

H = len({k for r in rows for k in r if k.startswith("entropy/train/latent_entropy/") and k.rsplit("/", 1)[1].isdigit()})

plt.rcParams.update({"font.size": 10})
f, (a, b) = plt.subplots(1, 2, figsize=(13, 4.6), constrained_layout=True)
for key, color, label in [("entropy/train/elbo", "tab:blue", "entropy/train/elbo"),
                          ("entropy/train/sum", "tab:red", "entropy/train/sum")]:
    x, y = series(key)
    a.plot(x, y, color=color, lw=1.8, label=label)
x, y = series("entropy/train/rel_gap")
a.set_title(f"ELBO vs entropy sum (train, per epoch); final rel_gap = {y[-1]:.2%}")
a.set_xlabel("trainer/global_step"); a.set_ylabel("nats per sample")
a.set_ylim(bottom=max(a.get_ylim()[0], -100))
a.grid(alpha=0.3); a.legend(loc="lower right")

cmap = plt.get_cmap("viridis")
for h in range(H):
    x, y = series(f"entropy/train/latent_entropy/{h}")
    b.plot(x, y, color=cmap(h / max(H - 1, 1)), lw=1.3, label=f"latent_entropy/{h}")
for key, style, label in [("entropy/train/latent_entropy/prior", "--", "prior"),
                          ("entropy/train/latent_entropy/threshold", ":", "threshold")]:
    x, y = series(key)
    b.plot(x, y, "k" + style, lw=1.2, label=label)
b.set_title(f"per-latent encoder entropy H[q(z_h|x)] (train, H = {H})")
b.set_xlabel("trainer/global_step"); b.set_ylabel("nats")
b.grid(alpha=0.3); b.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))

f.suptitle(f"EntropyMonitor logs read back from the W&B offline run file ({os.path.basename(path)})",
           fontsize=11)
out = f"{fig}/wandb_offline_run.png"
f.savefig(out, dpi=110)
print(f"   {out}")
EOF

ls -l "$FIG"/tensorboard_*.png "$FIG"/wandb_offline_run.png
