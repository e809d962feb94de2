"""What transfer reports about data and models: one file per report, and what they share.

``evaluate`` (metrics, confusion matrix and report.html of a model on labeled
images, and the same at the end of a run), ``doctor`` (wrong labels,
near-duplicates and outliers before training), ``explain`` (Grad-CAM) and
``visualize`` (filters and activation maps) each write one output folder;
``metrics``, ``plots``, ``figures`` and ``report`` (the HTML page) are what
they draw with. A new report is one more file here.
"""
