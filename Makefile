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
# snprintf truncation is deliberate here (bounded messages), so that warning is off.
CFLAGS_BASE = -std=c11 $(OPT) -g -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-format-truncation -MMD -MP $(SAN) \
	-I. -Ishared -I/usr/share/include/llhttp $(PKG_CFLAGS)
CFLAGS   += $(CFLAGS_BASE) -pthread
LDLIBS    = $(PKG_LIBS) -lm -pthread
CHECK_LIBS = $(shell pkg-config --libs check)

SHARED_SRC = $(wildcard shared/*.c)
PROXY_SRC  = $(filter-out proxy/main.c,$(wildcard proxy/*.c))
ENGINE_SRC = $(filter-out engine/main.c,$(wildcard engine/*.c engine/*/*.c engine/*/*/*.c))
UNIT_SRC   = $(wildcard tests/unit/test_*.c)
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
NVFLAGS = -O3 -std=c++17 -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings -I. -Ishared \
	$(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a))
CU_OBJ  = $(patsubst %.cu,$(BUILD)/obj/%.o,$(CU_SRC))
ENGINE_OBJ += $(CU_OBJ)
CFLAGS += -DKV_HAVE_CUDA
LDLIBS_ENGINE = -L$(CUDA_HOME)/lib64 -lcudart -lcublas -lstdc++
endif
endif

.PHONY: all deps deps-test test run asan clean bench-proxy bench-engine-cpu units integ
all: $(KVGATE) $(LIBSHARED) $(if $(wildcard engine/main.c),$(ENGINE)) $(TESTBINS)

deps:
	@tools/deps.sh
deps-test:
	@tools/deps.sh test

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
$(BUILD)/tests/%: tests/upstream/%.c $(LIBSHARED)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $(filter %.c %.a,$^) $(LDLIBS)

# The test suite: unit suites (Check), then the integration scripts that start real processes.
test: deps-test
	@$(MAKE) --no-print-directory units integ
units: all $(UNITS)
	@fail=0; for t in $(UNITS); do echo "== $$t"; $$t || fail=1; done; exit $$fail
integ: all
	@fail=0; for t in tests/integ/*.sh; do [ -e "$$t" ] || continue; echo "== $$t"; \
		BUILD=$(BUILD) sh $$t || { echo "FAIL $$t"; fail=1; }; done; exit $$fail

run: deps
	@$(MAKE) --no-print-directory all
	@sh tools/run.sh $(BUILD)

asan: deps-test
	@$(MAKE) --no-print-directory BUILD=build-asan OPT=-O1 NVCC= \
		SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
		units integ

bench-proxy: deps-test
	@$(MAKE) --no-print-directory all
	@sh bench/proxy.sh $(BUILD)

bench-engine-cpu: deps-test
	@$(MAKE) --no-print-directory all
	@sh bench/engine_cpu.sh $(BUILD)

clean:
	rm -rf build build-asan

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
