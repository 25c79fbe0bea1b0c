"""Front-ends on top of the entry points: Keras layers, parameter estimation,
the sensitivity comparison and its command line. `import sensode` does not
import these modules; `sensode.keras`, `sensode.fit`, ... load them on first use."""
