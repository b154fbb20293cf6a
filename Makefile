# The two commands of the README: `make demo` and `make test`.
# Everything else here is set-up they share: a pinned virtual environment
# in .venv and a colcon build of the package (messages + Python) in install/.
SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cass_ros_installed
BUILD_STAMP := install/cass_ros/share/cass_ros/package.xml
# rclpy needs no AMENT_PREFIX_PATH, but ament_index and colcon do.
ROS_ENV := export AMENT_PREFIX_PATH=$(VENV) && source install/setup.bash
DEMO_OUT ?= $(CURDIR)/demo_output

.PHONY: all venv build test demo lint clean

all: build

venv: $(STAMP)

$(STAMP): requirements.lock tools/fix_ros_wheels.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.lock
	# The ROS wheels hard-code the build machine's Python paths in their CMake exports.
	$(PY) tools/fix_ros_wheels.py
	# The ROS wheels ship package.xml files: keep colcon from finding them.
	touch $(VENV)/COLCON_IGNORE
	touch $@

build: $(BUILD_STAMP)

$(BUILD_STAMP): $(STAMP) package.xml CMakeLists.txt $(wildcard msg/*.msg) $(shell find cass_ros -name "*.py" -o -name "*.txt") $(wildcard launch/* config/* scripts/*)
	AMENT_PREFIX_PATH=$(VENV) $(VENV)/bin/colcon --log-base log build --base-paths . --event-handlers console_cohesion- summary+
	touch $@

test: build
	$(VENV)/bin/ruff check cass_ros test benchmarks scripts tools launch
	$(ROS_ENV) && $(VENV)/bin/pytest -q test

lint: $(STAMP)
	$(VENV)/bin/ruff check cass_ros test benchmarks scripts tools launch

demo: build
	$(ROS_ENV) && $(PY) tools/run_demo.py --out $(DEMO_OUT)

clean:
	rm -rf build install log $(DEMO_OUT)
