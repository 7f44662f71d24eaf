"""normrepro: reproducible replications of "ConvNeXt BN->LN" and "PowerNorm vs BN vs LN".

The library lives here; `replications/<paper>/` holds only configs, claims and paper numbers.
"""

__version__ = "0.1.0"
