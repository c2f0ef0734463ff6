"""covidxr: chest X-ray COVID-19 classification by transfer learning, evaluated honestly."""

__version__ = "0.1.0"
