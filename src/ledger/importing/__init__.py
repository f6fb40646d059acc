"""Importers: files from outside the ledger turned into commands.

Each importer decodes its input once, at this edge, into the application's
command types, checks every row before writing, and reports row-numbered
errors instead of stopping at the first bad row. Imports are idempotent
because every activity carries the source reference of its row.

- :mod:`ledger.importing.program_file`: a TOML program file into a ``ProgramSpec``.
- :mod:`ledger.importing.crm`: the CRM sales-opportunities CSV files into
  partner enrollments and activities.
"""

from ledger.importing.crm import ImportReport, RowError, import_crm_opportunities, write_error_file
from ledger.importing.program_file import decode_program, load_program_file

__all__ = [
    "ImportReport",
    "RowError",
    "decode_program",
    "import_crm_opportunities",
    "load_program_file",
    "write_error_file",
]
