"""The command line's decoding flags come from ``DecodingOptions``' fields (type, help and which
fields the command line sets, declared once on the field)."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from hooked_whisper.cli import add_decoding_flags
from hooked_whisper.decoding_options import LONG_FORM_OPTIONS, DecodingOptions, cli_fields


def test_each_command_line_option_is_a_flag_typed_and_described_by_its_field():
    parser = argparse.ArgumentParser()
    add_decoding_flags(parser, LONG_FORM_OPTIONS)
    flags = {action.dest: action for action in parser._actions if action.dest != "help"}
    meant = {f.name for f in fields(DecodingOptions) if f.metadata["cli"]}
    assert set(flags) == meant == {f.name for f, _ in cli_fields()}
    assert {"language", "task", "temperature", "beam_size", "best_of", "max_new_tokens"} <= meant
    assert not meant & {"prompt", "prefix", "stop_on_loop", "timestamps"}  # transcribe writes or needs these
    for f in fields(DecodingOptions):
        if f.name in flags:
            assert flags[f.name].help.startswith(f.metadata["help"])
    args = parser.parse_args(["--beam-size", "2", "--length-penalty", "0.5", "--task", "translate"])
    given = {name: value for name, value in vars(args).items() if value is not None}
    assert given == {"beam_size": 2, "length_penalty": 0.5, "task": "translate"}
    options = DecodingOptions.merged(LONG_FORM_OPTIONS, given)
    assert options.beam_size == 2 and options.temperature == LONG_FORM_OPTIONS.temperature  # the rest untouched
    assert "(default: 0.0, 0.2, 0.4, 0.6, 0.8, 1.0)" in flags["temperature"].help  # transcribe's schedule
    for bad in (["--beam-size", "two"], ["--task", "summarise"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
