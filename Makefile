# The two commands of the README: `make demo` and `make test`.
# Everything else here is set-up they share: a pinned virtual environment
# and a colcon build of the package (messages + Python) per ROS distribution:
#   kilted (default): .venv from requirements.lock, build/ and install/
#   jazzy (the LTS):  .venv-jazzy from requirements-jazzy.lock, build-jazzy/
#                     and install-jazzy/
# `make test` runs every test on Kilted, then the ROS-facing ones (test/ros,
# test/bag, test/cli) on Jazzy; `make test DISTROS=kilted` skips Jazzy.
SHELL := /bin/bash
PYTHON ?= python3
DISTRO ?= kilted
DISTROS ?= kilted jazzy

ifeq ($(DISTRO),jazzy)
VENV := $(CURDIR)/.venv-jazzy
LOCK := requirements-jazzy.lock
BUILD_BASE := build-jazzy
INSTALL_BASE := install-jazzy
TEST_PATHS := test/ros test/bag test/cli
else ifeq ($(DISTRO),kilted)
VENV := $(CURDIR)/.venv
LOCK := requirements.lock
BUILD_BASE := build
INSTALL_BASE := install
TEST_PATHS := test
else
$(error DISTRO must be kilted or jazzy, not '$(DISTRO)')
endif

PY := $(VENV)/bin/python
STAMP := $(VENV)/.cass_ros_installed
BUILD_STAMP := $(INSTALL_BASE)/cass_ros/share/cass_ros/package.xml
# The upstream ROS tools that have no PyPI wheel (launch, launch_ros,
# launch_pytest, ros2cli, vision_msgs ...: see their README). On a robot they
# come with the ROS install; here they are used from this folder when it
# exists, never copied. `make test ROS_TOOLS=` runs without them (the launch
# and ros2 command-line tests then skip with the reason).
ROS_TOOLS ?= $(wildcard $(CURDIR)/../shared/ros2)
ROS_TOOLS_STAMP := $(VENV)/.ros_tools_installed
ROS_TOOL_WHEELS := launch launch_xml launch_yaml launch_ros launch_pytest launch_testing \
	launch_testing_ros ros2launch ros2cli ros2run ros2pkg ros2topic ros2node ros2param \
	ros2service ros2interface rosidl_runtime_py
# rclpy needs no AMENT_PREFIX_PATH, but ament_index and colcon do.
ROS_ENV := export AMENT_PREFIX_PATH=$(VENV) && source $(INSTALL_BASE)/setup.bash
PYTEST_FLAGS ?= -q -rs
DEMO_OUT ?= $(CURDIR)/demo_output
# Extra tools/run_demo.py arguments, e.g. DEMO_ARGS='--weights random' (no
# download attempt: the README test runs `make demo` that way).
DEMO_ARGS ?=
COLCON_BASES := . $(if $(ROS_TOOLS),$(ROS_TOOLS)/src)
LINT_PATHS := cass_ros test benchmarks scripts tools launch

.PHONY: all venv ros-tools build test check demo lint clean gpu-wheels

all: build

venv: $(STAMP)

$(STAMP): $(LOCK) tools/fix_ros_wheels.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r $(LOCK)
	# The ROS wheels hard-code the build machine's Python paths in their CMake exports.
	$(PY) tools/fix_ros_wheels.py
	# The ROS wheels ship package.xml files: keep colcon from finding them.
	touch $(VENV)/COLCON_IGNORE
	rm -f $(ROS_TOOLS_STAMP)
	touch $@

ros-tools: $(if $(ROS_TOOLS),$(ROS_TOOLS_STAMP))

# --no-deps: their declared requirements (ament_index_python ...) come with
# the ros-* wheels under other distribution names.
$(ROS_TOOLS_STAMP): $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-index \
		--find-links $(ROS_TOOLS)/wheels $(ROS_TOOL_WHEELS)
	touch $@

build: $(BUILD_STAMP)

# With ROS_TOOLS, its message packages (vision_msgs, composition_interfaces)
# build in the same workspace; their test blocks need ament_lint packages
# that have no wheels, hence BUILD_TESTING=OFF.
$(BUILD_STAMP): $(STAMP) $(if $(ROS_TOOLS),$(ROS_TOOLS_STAMP)) package.xml CMakeLists.txt \
		$(wildcard msg/*.msg srv/*.srv) $(shell find cass_ros -name '*.py' -o -name '*.txt') \
		$(wildcard launch/* config/* scripts/*)
	AMENT_PREFIX_PATH=$(VENV) $(VENV)/bin/colcon --log-base log build \
		--build-base $(BUILD_BASE) --install-base $(INSTALL_BASE) \
		--base-paths $(COLCON_BASES) --event-handlers console_cohesion- summary+ \
		--cmake-args -DBUILD_TESTING=OFF
	touch $@

# One distribution: build and run its tests.
check: build
	$(ROS_ENV) && $(VENV)/bin/pytest $(PYTEST_FLAGS) $(TEST_PATHS)

test:
	$(MAKE) lint DISTRO=kilted
	set -e; for d in $(DISTROS); do echo "=== ROS 2 $$d"; $(MAKE) check DISTRO=$$d; done

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)

demo: build
	$(ROS_ENV) && $(PY) tools/run_demo.py --out $(DEMO_OUT) $(DEMO_ARGS)

clean:
	rm -rf build install build-jazzy install-jazzy log $(DEMO_OUT)

# The wheels benchmarks/gpu_check.sh installs, without network, on a GPU
# machine that has Python 3.12, torch and timm but not the rest (versions
# from requirements.lock; the script installs only what is missing there).
# ray and its own dependencies serve gpu_check's cass_fleet rows (~80 MB).
GPU_WHEELS ?= benchmarks/wheels
GPU_WHEEL_NAMES := open_clip_torch ftfy wcwidth regex scipy opencv-python-headless PyYAML tqdm \
	rosbags apsw lz4 ruamel.yaml backports.zstd typing_extensions huggingface_hub safetensors \
	ray msgpack protobuf jsonschema jsonschema-specifications referencing rpds-py attrs click \
	filelock requests charset-normalizer idna urllib3 certifi packaging
gpu-wheels: $(STAMP)
	$(PY) -m pip download --disable-pip-version-check -q --python-version 3.12 \
		--only-binary=:all: --no-deps -d $(GPU_WHEELS) \
		$$(for n in $(GPU_WHEEL_NAMES); do grep -i "^$$n==" $(LOCK); done)
	@ls $(GPU_WHEELS)
