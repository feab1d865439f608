"""Loss versus metric, settled: when they agree, why they differ, by how much.

    from catalogue import run_catalogue, format_markdown
    print(format_markdown(run_catalogue()))
"""

from catalogue.framework import (CatalogueConfig, Measurement, format_details,
                                 format_markdown, run_catalogue, all_scenarios, to_json,
                                 write_report)
