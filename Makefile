# kvgate: one plain GNU Makefile.
#   make            build build/bin/kvgate, build/bin/kvgate-engine and build/lib/libkvshared.a
#   make test       install what is missing (tools/deps.sh), build, run every test
#   make run        serve on https://127.0.0.1:8443 (see README)
#   make asan       build with AddressSanitizer + UBSan into build-asan/ and run the whole test suite
#   make bench-proxy, bench-tokenizer, ...   benchmarks that print their table (bench/)
# CUDA: built when nvcc is found (NVCC=... to choose; NVCC= to skip).

BUILD    ?= build
CC       ?= cc
OPT      ?= -O2
SAN      ?=
NVCC     ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)

PKGS      = libevent libevent_openssl openssl libcjson oniguruma libutf8proc libxxhash
LLHTTP    = /usr/share/llhttp
# Lazy (=): pkg-config only runs once deps are installed.
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS))
PKG_LIBS   = $(shell pkg-config --libs $(PKGS))
# snprintf truncation is deliberate here (bounded messages), so that warning is off (a gcc
# warning: clang, used for the fuzzers, is told not to mind the unknown name).
CC_IS_CLANG = $(findstring clang,$(shell $(CC) --version 2>/dev/null | head -n 1))
CFLAGS_BASE = -std=c11 $(OPT) -g -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-format-truncation \
	$(if $(CC_IS_CLANG),-Wno-unknown-warning-option) -MMD -MP $(SAN) \
	-I. -Ishared -I/usr/share/include/llhttp $(PKG_CFLAGS)
CFLAGS   += $(CFLAGS_BASE) -pthread
LDLIBS    = $(PKG_LIBS) -lm -pthread
CHECK_LIBS = $(shell pkg-config --libs check)

SHARED_SRC = $(wildcard shared/*.c)
PROXY_SRC  = $(filter-out proxy/main.c,$(wildcard proxy/*.c))
ENGINE_SRC = $(filter-out engine/main.c,$(wildcard engine/*.c engine/*/*.c engine/*/*/*.c))
UNIT_SRC   = $(wildcard tests/unit/test_*.c)
FUZZ_SRC   = $(wildcard tests/fuzz/fuzz_*.c)
TOOL_SRC   = $(wildcard tests/upstream/*.c)

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
SHARED_OBJ = $(call obj,$(SHARED_SRC)) $(BUILD)/obj/llhttp/llhttp.o $(BUILD)/obj/llhttp/api.o \
	$(BUILD)/obj/llhttp/http.o
PROXY_OBJ  = $(call obj,$(PROXY_SRC))
ENGINE_OBJ = $(call obj,$(ENGINE_SRC))

LIBSHARED = $(BUILD)/lib/libkvshared.a
LIBPROXY  = $(BUILD)/lib/libkvproxy.a
LIBENGINE = $(BUILD)/lib/libkvengine.a
KVGATE    = $(BUILD)/bin/kvgate
ENGINE    = $(BUILD)/bin/kvgate-engine
UNITS     = $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
TESTBINS  = $(patsubst tests/upstream/%.c,$(BUILD)/tests/%,$(TOOL_SRC))

# CUDA backend (engine/backend/cuda/*.cu) when nvcc is there.
CU_SRC = $(wildcard engine/backend/cuda/*.cu)
ifneq ($(strip $(NVCC)),)
ifneq ($(strip $(CU_SRC)),)
CUDA_HOME  ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_ARCHS ?= 80 87 89 90 110
NVFLAGS = -O3 -std=c++17 -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings -MMD -MP -I. -Ishared \
	$(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a))
CU_OBJ  = $(patsubst %.cu,$(BUILD)/obj/%.o,$(CU_SRC))
ENGINE_OBJ += $(CU_OBJ)
CFLAGS += -DKV_HAVE_CUDA
LDLIBS_ENGINE = -L$(CUDA_HOME)/lib64 -lcudart -lcublas -lstdc++
endif
endif

.PHONY: all deps deps-test deps-bench test run asan fuzz clean bench-proxy bench-engine-cpu bench-engine-cuda bench-experts bench-tokenizer bench-routing soak soak-asan units integ
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
all: $(KVGATE) $(LIBSHARED) $(if $(wildcard engine/main.c),$(ENGINE)) $(TESTBINS)

deps:
	@tools/deps.sh
deps-test:
	@tools/deps.sh test
deps-bench:
	@tools/deps.sh bench

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<
# llhttp's generated C, compiled into the build as Debian ships it (not our warnings to fix).
$(BUILD)/obj/llhttp/%.o: $(LLHTTP)/%.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(OPT) -g $(SAN) -I/usr/share/include/llhttp -c -o $@ $<
$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c -o $@ $<

$(LIBSHARED): $(SHARED_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^
$(LIBPROXY): $(PROXY_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^ $(if $^,,$(error no proxy sources))
$(LIBENGINE): $(ENGINE_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(KVGATE): $(BUILD)/obj/proxy/main.o $(LIBPROXY) $(LIBSHARED)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $(filter %.o %.a,$^) $(LDLIBS)
$(ENGINE): $(BUILD)/obj/engine/main.o $(LIBENGINE) $(LIBSHARED)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $(filter %.o %.a,$^) $(LDLIBS) $(LDLIBS_ENGINE)
# Each unit suite links every library; the linker takes only what it uses.
$(BUILD)/tests/test_%: tests/unit/test_%.c $(LIBPROXY) $(if $(ENGINE_SRC),$(LIBENGINE)) $(LIBSHARED)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $(filter %.c %.a,$^) $(CHECK_LIBS) $(LDLIBS) $(LDLIBS_ENGINE)
# libFuzzer targets (make fuzz builds them with clang into build-fuzz/).
$(BUILD)/fuzz/%: tests/fuzz/%.c $(LIBPROXY) $(LIBENGINE) $(LIBSHARED)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fsanitize=fuzzer -o $@ $(filter %.c %.a,$^) $(LDLIBS)
$(BUILD)/tests/%: tests/upstream/%.c $(LIBSHARED)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $(filter %.c %.a,$^) $(LDLIBS)

# The test suite: unit suites (Check), then the integration scripts that start real processes;
# then the same again built with ASan + UBSan; then every fuzzer for FUZZ_SMOKE seconds. Builds
# run in parallel, tests one after another.
FUZZ_SMOKE ?= 10
test: deps-test
	@$(MAKE) --no-print-directory -j$(JOBS) all $(UNITS)
	@$(MAKE) --no-print-directory units integ
	@$(MAKE) --no-print-directory asan
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(FUZZ_SMOKE)
units: all $(UNITS)
	@fail=0; for t in $(UNITS); do echo "== $$t"; $$t || fail=1; done; exit $$fail
integ: all
	@fail=0; for t in tests/integ/*.sh; do [ -e "$$t" ] || continue; echo "== $$t"; \
		BUILD=$(BUILD) sh $$t || { echo "FAIL $$t"; fail=1; }; done; exit $$fail

run: deps
	@$(MAKE) --no-print-directory -j$(JOBS) all
	@sh tools/run.sh $(BUILD)

ASAN_SAN = -fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer -fno-sanitize-recover=all
asan: deps-test
	@$(MAKE) --no-print-directory -j$(JOBS) BUILD=build-asan OPT=-O1 NVCC= SAN="$(ASAN_SAN)" all \
		$(patsubst $(BUILD)/%,build-asan/%,$(UNITS))
	@$(MAKE) --no-print-directory BUILD=build-asan OPT=-O1 NVCC= SAN="$(ASAN_SAN)" units integ

bench-proxy: deps-bench
	@$(MAKE) --no-print-directory all
	@sh bench/proxy.sh $(BUILD)

# Fuzzing: every tests/fuzz/fuzz_*.c with libFuzzer, ASan and UBSan, FUZZ_SECONDS each.
FUZZ_SECONDS ?= 60
FUZZ_SAN = -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
fuzz: deps-test
	@$(MAKE) --no-print-directory -j$(JOBS) BUILD=build-fuzz CC=clang OPT=-O1 NVCC= SAN="$(FUZZ_SAN)" \
		$(patsubst tests/fuzz/%.c,build-fuzz/fuzz/%,$(FUZZ_SRC))
	@sh tests/fuzz/run.sh build-fuzz $(FUZZ_SECONDS)

# Soak: kvgate + two CPU engines on tests/data/engine_tiny, a mixed streaming load for SOAK_SECONDS
# (600); nothing lost, RSS flat. soak-asan: a shorter run on the ASan build (leaks fail it).
soak: deps-test
	@$(MAKE) --no-print-directory -j$(JOBS) all
	@BUILD=$(BUILD) SOAK_SECONDS=$${SOAK_SECONDS:-600} sh tests/soak/soak.sh
soak-asan: deps-test
	@$(MAKE) --no-print-directory -j$(JOBS) BUILD=build-asan OPT=-O1 NVCC= SAN="$(ASAN_SAN)" all
	@BUILD=build-asan SOAK_SECONDS=$${SOAK_SECONDS:-60} sh tests/soak/soak.sh

bench-routing: deps-test
	@$(MAKE) --no-print-directory -j$(JOBS) all
	@sh bench/routing.sh $(BUILD)

bench-tokenizer: deps-test
	@$(MAKE) --no-print-directory $(BUILD)/bench/tokenizer_bench
	@sh bench/tokenizer.sh $(BUILD)
$(BUILD)/bench/tokenizer_bench: bench/tokenizer_bench.c $(LIBSHARED)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $(filter %.c %.a,$^) $(LDLIBS)

bench-engine-cpu: deps-test
	@$(MAKE) --no-print-directory all
	@sh bench/engine_cpu.sh $(BUILD)

# The experts the CUDA bench's random router touches, counted on the CPU (EXPERTS_LAYERS layers,
# ~1.2 GB of memory each; bench/experts.c).
bench-experts: deps-test
	@$(MAKE) --no-print-directory $(BUILD)/bench/experts
	@$(BUILD)/bench/experts $${EXPERTS_LAYERS:-12}
$(BUILD)/bench/experts: bench/experts.c bench/dsv2_random.c bench/optime.c $(LIBENGINE) $(LIBSHARED)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $(filter %.c %.a,$^) $(LDLIBS) $(LDLIBS_ENGINE)

# On a machine with an NVIDIA GPU and nvcc: the CUDA decode/prefill table (bench_cuda_decode), then
# transformers on the same shape when python3 has it (bench/cuda_peer.py); notes in bench/NOTES-cuda.md.
bench-engine-cuda: deps
	@sh tests/cuda/build.sh
	@sh tests/cuda/run.sh bench
	@if python3 -c 'import torch, transformers' 2>/dev/null; then python3 bench/cuda_peer.py; \
	else echo "bench-engine-cuda: no torch/transformers here: the peer was not run"; fi

clean:
	rm -rf build build-asan build-fuzz

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
