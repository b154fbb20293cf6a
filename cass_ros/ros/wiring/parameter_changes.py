"""What the node does with a parameter change and a /cass/prompts message
(docs/ros-interface.md, Prompts and Parameters): one validated path for
both, the prompt set handed to the prompt thread, the runtime parameters
swapped in, warnings for settings left doing nothing. A mixin of
CassNodeBase (node.py), which holds the state it reads."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rcl_interfaces.msg import SetParametersResult
from rclpy.parameter import Parameter
from std_msgs.msg import String

from ...core.config import CassConfig, ConfigError
from ...core.prompts import PromptError, PromptSet, check_prompt_set, parse_prompt_text
from .. import params as node_params
from ..workers.prompts import keeping
from .model_setup import one_line

if TYPE_CHECKING:
    from ..workers.in_force import InForce
    from ..workers.prompts import PromptWorker


class ParameterChanges:
    """The parameter callback and the prompt topic of CassNodeBase."""

    _in_force: InForce | None
    _prompts: PromptWorker | None
    _prompt_values: dict[str, Any]
    config: CassConfig

    def _on_prompt_text(self, msg: String) -> None:
        """/cass/prompts: the text becomes the ``prompts`` parameter, so the
        topic and ``ros2 param set`` share one validated path and
        ``ros2 param get prompts`` shows what is in force."""
        try:
            classes = parse_prompt_text(msg.data)
            check_prompt_set(PromptSet(classes=tuple(classes)))
        except PromptError as e:
            self.get_logger().warning(f"prompt message rejected, {self._keeping()}: {e}")
            return
        value = ["|".join(names) for names in classes]
        result = self.set_parameters([Parameter("prompts", Parameter.Type.STRING_ARRAY, value)])[0]
        if not result.successful:
            self.get_logger().warning(f"prompt message rejected, {self._keeping()}: "
                                      f"{result.reason}")

    def _keeping(self) -> str:
        if self._in_force is None:
            return "keeping the prompt parameters (node not configured)"
        return keeping(self._in_force.session)

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = _changes(params)
        if not changes:
            return SetParametersResult(successful=True)
        if self._in_force is None:
            return self._store_unconfigured(changes)
        try:
            runtime, prompt_set, config = self._check_changes(changes)
            new_prompts = prompt_set is not None and self._in_force.session.request(prompt_set)
        except (ConfigError, PromptError) as e:
            reason = one_line(str(e))
            self.get_logger().warning(f"parameter change rejected: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        self._in_force.set_runtime(runtime)
        self._warn_idle(changes)
        if "color_table_file" in changes:
            self._write_color_table(self._in_force.session.active)
        for name in node_params.PROMPT_NAMES:
            if name in changes:
                self._prompt_values[name] = changes[name]
        if config is not None:
            self.config = config        # what later changes are checked against
            self._prompts.submit_config(config)
        if new_prompts:
            self._prompts.submit_prompts(prompt_set)
        return SetParametersResult(successful=True)

    def _store_unconfigured(self, changes: dict[str, Any]) -> SetParametersResult:
        """Not configured (a managed node): the change is checked as
        configure will read it, then only stored in the parameter."""
        try:
            values = dict(node_params.read_all(self), **changes)
            self._initial_prompt_set(node_params.settings_from_values(values)[0])
        except (ConfigError, PromptError) as e:
            reason = one_line(str(e))
            self.get_logger().warning(f"parameter change rejected: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _warn_idle(self, changes: dict[str, Any]) -> None:
        """A warning for each parameter this change leaves doing nothing."""
        values = node_params.read_all(self)   # before the change: it is not applied yet
        before = set(node_params.idle_settings(values))
        for line in node_params.idle_settings(dict(values, **changes)):
            if line not in before:
                self.get_logger().warning(line)

    def _check_changes(self, changes: dict[str, Any]
                       ) -> tuple[node_params.RuntimeParams, PromptSet | None, CassConfig | None]:
        return node_params.check_node_change(
            dict(dataclasses.asdict(self._in_force.runtime), **self._prompt_values),
            self._in_force.waiting, self.config, changes)


def _changes(params: Sequence[Parameter]) -> dict[str, Any]:
    """Our parameters among ``params``, string arrays as lists of str."""
    changes = {}
    for p in params:
        spec = node_params.SPECS.get(p.name)
        if spec is None:
            continue
        value = p.value
        if spec.kind == "list":
            value = [] if value is None else [str(v) for v in value]
        changes[p.name] = value
    return changes
