"""The debrief report (`drill report`): the workshop's story from the journal, the verify runs,
Prometheus, the running feed and the teams' store, as one self-contained HTML file or Markdown.

Gathering (sources, prom, probe, traces) is apart from the conclusions (analysis), the plots
(plots, matplotlib) and the layout (render); sections puts them together.
"""

from drill.report.build import FORMATS, ReportError, default_out, write_report
from drill.report.sources import parse_since

__all__ = ["FORMATS", "ReportError", "default_out", "parse_since", "write_report"]
