"""``vpt schema``: list, show and check the declared table schemas."""

from __future__ import annotations

import typer

from vpt.commands import _ui

app = typer.Typer(help="List, show and check the declared table schemas.", no_args_is_help=True)


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".") + "."


@app.command("list")
def list_schemas() -> None:
    """List the declared schemas with their versions."""
    from vpt.io.tables import load_schema, schema_names

    schemas = [load_schema(name) for name in schema_names()]
    typer.echo(_ui.aligned([[s.name, f"v{s.version}", _first_sentence(s.description)] for s in schemas]))


@app.command("show")
def show(
    name: str = typer.Argument(..., help="Schema name (see `vpt schema list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print the schema file as JSON."),
) -> None:
    """Show one schema: its columns, types and meaning."""
    import json

    from vpt.io.tables import load_schema, type_name

    schema = load_schema(name)
    if as_json:
        typer.echo(json.dumps(schema.to_dict(), indent=2))
        return
    rows = [["column", "type", "nullable", "required", "description"]]
    for field in schema.fields:
        description = field.description
        if field.enum is not None:
            description += f" One of: {', '.join(field.enum)}."
        rows.append([field.name, type_name(field.type), "yes" if field.nullable else "no",
                     "yes" if field.required else "no", description])
    extra = "allowed" if schema.additional_columns else "not allowed"
    typer.echo(f"{schema.label}\n{schema.description}\nOther columns: {extra}.\n\n{_ui.aligned(rows)}")


@app.command("check")
def check(
    source: str = typer.Argument(..., help="Table to check: a file, a directory of parts, a glob, or - for stdin."),
    schema_name: str = typer.Option(None, "--as", help="Check against this schema instead of the one the file names."),
) -> None:
    """Check every row of a table against its declared schema."""
    from vpt.io.tables import check_table

    schema, rows = check_table(source, schema_name)
    typer.echo(f"{source}: ok ({schema.label}, {rows} row{'' if rows == 1 else 's'})")
