"""Reports: tables, plots and the HTML page built from run directories."""
