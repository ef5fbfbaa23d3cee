#!/usr/bin/env bash
# Fuzzes the reader's C++ core (fuzz_decode.cc) with libFuzzer + ASan + UBSan for SECONDS
# (default 60), then prints executions, coverage, crashes and the LeakSanitizer verdict.
#
#   bash fuzz/run.sh [SECONDS]
#
# Needs clang with libFuzzer (Debian: apt-get install clang), python3 with numpy, Pillow and
# OpenCV (the test extra), and libjpeg-turbo's headers. Installs nothing: it stops and names
# what is missing.
#
# libjpeg-turbo itself: by default the system library (what the extension links), which is not
# instrumented: ASan then sees only our code, and libFuzzer's coverage only our branches
# (cov ~300). For a deep run, point LIBJPEG_TURBO_SRC at an unpacked libjpeg-turbo source tree;
# it is built once with the same sanitizers and coverage (SIMD off: the assembly cannot be
# instrumented) into the work folder and linked statically (cov ~10k). To get the exact source
# of the Debian library (no root needed, nothing installed):
#   mkdir -p /tmp/src/lists/partial /tmp/src/parts && printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > /tmp/src/parts/src.sources
#   O="-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=/tmp/src/parts -o Dir::State::Lists=/tmp/src/lists"
#   apt-get $O update && (cd /tmp/src && apt-get $O source --download-only libjpeg-turbo && tar xzf libjpeg-turbo_*.orig.tar.gz)
#   LIBJPEG_TURBO_SRC=$(echo /tmp/src/libjpeg-turbo-*/) bash fuzz/run.sh 600
#
# Files (FUZZ_WORK_DIR, default fuzz/.work, git-ignored): seeds/ (made fresh each run by
# make_seeds.py), corpus/ (kept between runs, so coverage accumulates), crashes/, fuzz.log.
# Every crash: fix it, then commit its input as fuzz/regressions/<name> (replayed at the end of
# every run here, and through Python by tests/test_fuzz_inputs.py).
set -uo pipefail
cd "$(dirname "$0")/.."

SECONDS_TO_RUN="${1:-60}"
WORK="${FUZZ_WORK_DIR:-fuzz/.work}"
CXX="${CXX_FUZZ:-clang++}"
CC="${CC_FUZZ:-clang}"
PYTHON="${PYTHON:-python3}"
SANITIZE="-fsanitize=address,undefined -fno-sanitize-recover=all"

missing=()
command -v "$CXX" >/dev/null || missing+=("$CXX (Debian: apt-get install clang)")
command -v "$PYTHON" >/dev/null || missing+=("$PYTHON")
if command -v "$PYTHON" >/dev/null && ! "$PYTHON" -c "import numpy, cv2, PIL" 2>/dev/null; then
  missing+=("numpy, opencv and Pillow for $PYTHON (python -m pip install -e '.[test]')")
fi
if [ -n "${LIBJPEG_TURBO_SRC:-}" ]; then
  [ -f "$LIBJPEG_TURBO_SRC/jdapimin.c" ] || missing+=("libjpeg-turbo sources in LIBJPEG_TURBO_SRC=$LIBJPEG_TURBO_SRC")
  command -v cmake >/dev/null || missing+=("cmake (to build the instrumented libjpeg-turbo)")
  command -v "$CC" >/dev/null || missing+=("$CC")
elif [ ! -f /usr/include/jpeglib.h ]; then
  missing+=("libjpeg-turbo headers (apt-get install libjpeg62-turbo-dev)")
fi
if [ ${#missing[@]} -eq 0 ]; then
  probe_dir=$(mktemp -d)
  echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' \
    > "$probe_dir/probe.cc"
  "$CXX" -fsanitize=fuzzer,address,undefined "$probe_dir/probe.cc" -o "$probe_dir/probe" \
    2>/dev/null || missing+=("libFuzzer for $CXX (-fsanitize=fuzzer; Debian's clang package has it)")
  rm -rf "$probe_dir"
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "fuzz/run.sh: cannot run, missing:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 2
fi

mkdir -p "$WORK/corpus" "$WORK/crashes"
rm -rf "$WORK/seeds"

# ---- libjpeg-turbo: system, or an instrumented static build of the given sources
JPEG_FLAGS=(-ljpeg)
JPEG_NOTE="system libjpeg-turbo (not instrumented: sanitizers and coverage see our code only)"
if [ -n "${LIBJPEG_TURBO_SRC:-}" ]; then
  JPEG_BUILD="$WORK/libjpeg-turbo-asan"
  if [ ! -f "$JPEG_BUILD/libjpeg.a" ]; then
    echo "fuzz: building instrumented libjpeg-turbo from $LIBJPEG_TURBO_SRC (once, ~3 min on 2 cores)"
    mkdir -p "$JPEG_BUILD"
    (cd "$JPEG_BUILD" && cmake -G"Unix Makefiles" -DCMAKE_C_COMPILER="$CC" \
        -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_C_FLAGS_RELEASE="-g -O1 -fno-omit-frame-pointer $SANITIZE -fsanitize=fuzzer-no-link" \
        -DWITH_SIMD=0 -DENABLE_SHARED=0 -DWITH_TURBOJPEG=0 "$(cd "$LIBJPEG_TURBO_SRC" && pwd)" \
        > cmake.log 2>&1 && make -j"$(nproc)" jpeg-static > make.log 2>&1) || {
      echo "fuzz: libjpeg-turbo build failed, see $JPEG_BUILD/cmake.log and make.log" >&2; exit 2; }
  fi
  JPEG_FLAGS=(-I"$JPEG_BUILD" -I"$LIBJPEG_TURBO_SRC" "$JPEG_BUILD/libjpeg.a")
  JPEG_NOTE="instrumented libjpeg-turbo from $LIBJPEG_TURBO_SRC (SIMD off)"
fi

# ---- the fuzzer
FUZZER="$WORK/fuzz_decode"
echo "fuzz: building $FUZZER with $("$CXX" --version | head -1); $JPEG_NOTE"
"$CXX" -std=c++17 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer $SANITIZE \
  csrc/jpeg_decode.cc csrc/augment.cc csrc/resize.cc csrc/image_task.cc fuzz/fuzz_decode.cc \
  "${JPEG_FLAGS[@]}" -o "$FUZZER" || { echo "fuzz: build failed" >&2; exit 1; }

"$PYTHON" fuzz/make_seeds.py "$WORK/seeds" || { echo "fuzz: seed generation failed" >&2; exit 1; }

# ---- replay the committed regression inputs first: each must run clean
status=0
regressions=(fuzz/regressions/*)
if [ -e "${regressions[0]}" ]; then
  if "$FUZZER" -runs=0 "${regressions[@]}" > "$WORK/regressions.log" 2>&1; then
    echo "fuzz: ${#regressions[@]} regression input(s) replayed clean"
  else
    echo "fuzz: a regression input crashes again, see $WORK/regressions.log" >&2
    tail -30 "$WORK/regressions.log" >&2
    status=1
  fi
fi

# ---- fuzz. LeakSanitizer is on (libFuzzer's -detect_leaks=1 default): a leak is a crash.
before=$(ls "$WORK/crashes" | wc -l)
start=$(date +%s)
"$FUZZER" "$WORK/corpus" "$WORK/seeds" -max_total_time="$SECONDS_TO_RUN" -timeout=30 \
  -rss_limit_mb=2048 -dict=fuzz/jpeg.dict -print_final_stats=1 \
  -artifact_prefix="$WORK/crashes/" > "$WORK/fuzz.log" 2>&1
fuzz_status=$?
elapsed=$(( $(date +%s) - start ))
after=$(ls "$WORK/crashes" | wc -l)

last=$(grep -E '^#[0-9]+' "$WORK/fuzz.log" | tail -1)
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$WORK/fuzz.log")
peak=$(sed -n 's/^stat::peak_rss_mb: *//p' "$WORK/fuzz.log")
cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
corp=$(echo "$last" | sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p')
leaks=$(grep -c "ERROR: LeakSanitizer" "$WORK/fuzz.log")
echo "fuzz: $elapsed s, ${execs:-?} executions ($(( ${execs:-0} / (elapsed > 0 ? elapsed : 1) ))/s), coverage cov=${cov:-?} ft=${ft:-?}, corpus ${corp:-?} inputs/bytes, peak RSS ${peak:-?} MB"
echo "fuzz: crashes: $(( after - before )) new ($after in $WORK/crashes), leaks reported: $leaks"
if [ "$fuzz_status" -ne 0 ]; then
  echo "fuzz: libFuzzer exited $fuzz_status; the report:" >&2
  grep -E -A25 "ERROR: (Address|Leak|Undefined)Sanitizer|runtime error|invariant broken|deadly signal|Test unit written" \
    "$WORK/fuzz.log" | head -60 >&2
  echo "fuzz: reproduce with: $FUZZER <crash file>; fix, then commit it under fuzz/regressions/" >&2
  status=1
fi
exit $status
